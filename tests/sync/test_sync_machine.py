"""A stateful property test of two-way sync: random edits on both sides, syncs and pushes.

Invariants, checked after the two sides are given a chance to settle:
- converged: every active linked contact holds the same values locally and in GHL;
- no duplicates: one local row per GHL contact, one GHL contact per linked local row;
- nothing lost: the last value written locally to a field is either the final value, or was
  overwritten by a later write, or is recorded in ``conflicts`` (GHL won), or its contact is gone;
- a second sync is a no-op.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from ghlsync_cli.auth import BearerAuth
from ghlsync_cli.ghl.client import GHLClient, RetryPolicy, build_http_client
from ghlsync_cli.mapping import GHL_KEY, normalize_value
from ghlsync_cli.sandbox import DEFAULT_LOCATION_ID, DEFAULT_TOKEN, Sandbox, SandboxServer
from ghlsync_cli.store import Store
from ghlsync_cli.sync import local
from ghlsync_cli.sync.engine import SyncEngine

FIELDS = ("city", "company", "state", "first_name")
VALUES = st.sampled_from([None, "Alpha", "Beta", "Gamma"])
TAGS = st.sampled_from(["red", "green", "blue"])


@pytest.fixture
def world(tmp_path: Path, sandbox_server: SandboxServer, sandbox: Sandbox) -> Iterator[Any]:
    http = build_http_client(sandbox_server.url, auth=BearerAuth(lambda: DEFAULT_TOKEN))
    client = GHLClient(http, location_id=DEFAULT_LOCATION_ID, retry=RetryPolicy(attempts=2))
    yield tmp_path, sandbox, client
    client.close()


def test_two_way_sync_converges(world: Any) -> None:
    tmp_path, sandbox, client = world
    counter = iter(range(10**6))

    class SyncMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            sandbox.reset()
            self.store = Store.open(tmp_path / f"machine-{next(counter)}.db")
            with self.store.write():
                self.store.save_location(DEFAULT_LOCATION_ID, token_kind="env", now="t")
            self.engine = SyncEngine(self.store, client, location_id=DEFAULT_LOCATION_ID)
            self.serial = 0
            self.clock = 0
            # (local id, field) → the last local write: value, and when GHL first held it
            self.local_writes: dict[tuple[str, str], dict[str, Any]] = {}
            # (GHL id, field) → when GHL's side last wrote it
            self.remote_writes: dict[tuple[str, str], int] = {}

        def tick(self) -> int:
            self.clock += 1
            return self.clock

        def note_local(self, contact_id: str, field: str, value: Any) -> None:
            state = self.store.get_state(contact_id)
            if state and state["base"].get(field) == normalize_value(field, value):
                # Back to the agreed value: by definition (a change is a difference from the
                # base) this is no change, and GHL's value may win without a conflict.
                self.local_writes.pop((contact_id, field), None)
                return
            self.local_writes[(contact_id, field)] = {
                "value": normalize_value(field, value),
                "at": self.tick(),
                "delivered_at": None,
            }

        def note_deliveries(self) -> None:
            """Record when GHL first holds each pending local write (after a sync or push)."""
            remote = {c["id"]: c for c in sandbox.list_contacts()}
            now = self.tick()
            for (contact_id, field), write in self.local_writes.items():
                if write["delivered_at"] is not None:
                    continue
                row = self.store.get_contact(contact_id)
                theirs = remote.get(row["ghl_id"]) if row and row["ghl_id"] else None
                if theirs is None:
                    continue
                if normalize_value(field, theirs.get(GHL_KEY[field])) == write["value"]:
                    write["delivered_at"] = now

        def teardown(self) -> None:
            self.store.close()

        @initialize()
        def start_synced(self) -> None:
            """Both sides start with a few contacts in common, so edits have targets at once."""
            for name in ("Alpha", "Beta", "Gamma"):
                self.remote_add(name)
            self.engine.reconcile(full=True, force=True)

        # ---- local side ----------------------------------------------------------------
        def _active_local(self) -> list[dict[str, Any]]:
            return self.store.list_contacts(location_id=DEFAULT_LOCATION_ID, status="active")

        @rule(first=VALUES.filter(bool))
        def local_add(self, first: str) -> None:
            self.serial += 1
            row = local.add_contact(
                self.store,
                location_id=DEFAULT_LOCATION_ID,
                values={"first_name": first, "email": f"l{self.serial}@example.com"},
            )
            self.note_local(row["id"], "first_name", first)

        @precondition(lambda self: self._active_local())
        @rule(data=st.data(), field=st.sampled_from(FIELDS), value=VALUES)
        def local_edit(self, data: st.DataObject, field: str, value: Any) -> None:
            row = data.draw(st.sampled_from(self._active_local()))
            if row[field] == normalize_value(field, value):
                return  # not a change
            local.update_contact(self.store, row["id"], values={field: value or ""})
            self.note_local(row["id"], field, value)

        @precondition(lambda self: self._active_local())
        @rule(data=st.data(), tag=TAGS, add=st.booleans())
        def local_tag(self, data: st.DataObject, tag: str, add: bool) -> None:
            row = data.draw(st.sampled_from(self._active_local()))
            local.update_contact(
                self.store,
                row["id"],
                values={},
                add_tags=[tag] if add else None,
                remove_tags=None if add else [tag],
            )

        @precondition(lambda self: self._active_local())
        @rule(data=st.data())
        def local_delete(self, data: st.DataObject) -> None:
            row = data.draw(st.sampled_from(self._active_local()))
            local.delete_contact(self.store, row["id"])

        # ---- GHL side ------------------------------------------------------------------
        @rule(first=VALUES.filter(bool))
        def remote_add(self, first: str) -> None:
            self.serial += 1
            sandbox.ui_create_contact({"firstName": first, "email": f"r{self.serial}@example.com"})

        @precondition(lambda self: sandbox.list_contacts())
        @rule(data=st.data(), field=st.sampled_from(FIELDS), value=VALUES)
        def remote_edit(self, data: st.DataObject, field: str, value: Any) -> None:
            contact = data.draw(st.sampled_from(sandbox.list_contacts()))
            sandbox.ui_update_contact(contact["id"], {GHL_KEY[field]: value})
            self.remote_writes[(contact["id"], field)] = self.tick()

        @precondition(lambda self: sandbox.list_contacts())
        @rule(data=st.data(), tag=TAGS)
        def remote_tag(self, data: st.DataObject, tag: str) -> None:
            contact = data.draw(st.sampled_from(sandbox.list_contacts()))
            tags = set(contact.get("tags") or [])
            tags ^= {tag}
            sandbox.ui_update_contact(contact["id"], {"tags": sorted(tags)})

        @precondition(lambda self: sandbox.list_contacts())
        @rule(data=st.data())
        def remote_delete(self, data: st.DataObject) -> None:
            contact = data.draw(st.sampled_from(sandbox.list_contacts()))
            sandbox.ui_delete_contact(contact["id"])

        @precondition(lambda self: any(r["ghl_id"] for r in self._active_local()))
        @rule(data=st.data(), field=st.sampled_from(FIELDS), mine=VALUES, theirs=VALUES)
        def both_edit(self, data: st.DataObject, field: str, mine: Any, theirs: Any) -> None:
            """The same field changed on both sides before anyone synced."""
            linked = [r for r in self._active_local() if r["ghl_id"]]
            row = data.draw(st.sampled_from(linked))
            if sandbox.find_contact(row["ghl_id"]) is None:
                return
            if row[field] != normalize_value(field, mine):
                local.update_contact(self.store, row["id"], values={field: mine or ""})
                self.note_local(row["id"], field, mine)
            sandbox.ui_update_contact(row["ghl_id"], {GHL_KEY[field]: theirs})
            self.remote_writes[(row["ghl_id"], field)] = self.tick()

        # ---- syncs -------------------------------------------------------------------------
        @rule()
        def reconcile(self) -> None:
            self.engine.reconcile(overlap_seconds=0)
            self.note_deliveries()

        @rule()
        def push(self) -> None:
            self.engine.push()
            self.note_deliveries()

        @rule()
        def full_sync(self) -> None:
            self.engine.reconcile(full=True, force=True)
            self.note_deliveries()

        # ---- invariants -------------------------------------------------------------------
        @invariant()
        def no_duplicate_links(self) -> None:
            linked = self.store.query(
                "SELECT ghl_id, count(*) AS n FROM contacts WHERE ghl_id IS NOT NULL "
                "GROUP BY ghl_id HAVING n > 1"
            )
            assert linked == []

        def settle_and_check(self) -> None:
            self.engine.reconcile(full=True, force=True)
            self.note_deliveries()
            self.engine.reconcile(full=True, force=True)
            remote = {c["id"]: c for c in sandbox.list_contacts()}
            rows = self.store.list_contacts(location_id=DEFAULT_LOCATION_ID)
            by_ghl = {r["ghl_id"]: r for r in rows if r["ghl_id"]}
            # Every GHL contact has exactly one local row; GHL has no duplicate of a local one.
            assert set(remote) <= set(by_ghl)
            emails = [c.get("email") for c in remote.values() if c.get("email")]
            assert len(emails) == len(set(emails))
            for row in rows:
                if row["status"] != "active":
                    continue
                assert row["ghl_id"] in remote, row
                theirs = remote[row["ghl_id"]]
                for field in (*FIELDS, "email", "tags"):
                    want = normalize_value(field, theirs.get(GHL_KEY[field]))
                    assert row[field] == want, (field, row, theirs)
            conflicts = self.store.list_conflicts(location_id=DEFAULT_LOCATION_ID)
            lost = {(c["contact_id"], c["field"], c["local_value"]) for c in conflicts}
            current = {r["id"]: r for r in rows}
            for (contact_id, field), write in self.local_writes.items():
                row = current.get(contact_id)
                if row is None or row["status"] != "active":
                    continue
                if row[field] == write["value"] or (contact_id, field, write["value"]) in lost:
                    continue
                # Otherwise GHL must have written the field after it held our value: a later
                # write, not a loss.
                delivered = write["delivered_at"]
                later = self.remote_writes.get((row["ghl_id"], field), 0)
                assert delivered is not None and later > delivered, (
                    "lost without a conflict",
                    contact_id,
                    field,
                    write,
                    row[field],
                )
            again = self.engine.reconcile(full=True, force=True)
            assert (again.pull.created, again.pull.updated, again.pull.linked) == (0, 0, 0)
            assert (again.push.created, again.push.updated) == (0, 0)

    class CheckedMachine(SyncMachine):
        def teardown(self) -> None:
            try:
                self.settle_and_check()
            finally:
                super().teardown()

    run_state_machine_as_test(
        CheckedMachine,
        settings=settings(max_examples=60, stateful_step_count=30, deadline=None),
    )
