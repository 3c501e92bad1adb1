"""`ghlsync reconcile` through the real CLI against the sandbox: what a 15-minute timer needs."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ghlsync_cli.locks import location_lock
from ghlsync_cli.sandbox import DEFAULT_TOKEN, FaultRule, Sandbox
from tests.fakes import MemoryKeyring
from tests.helpers import Cli, contact_rows

SEARCH = "POST /contacts/search"


# ---- helpers ------------------------------------------------------------------------------------


def wait_until(condition: Callable[[], bool], *, timeout: float = 10.0, what: str = "") -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what or condition}")
        time.sleep(0.01)


def by_ghl_id(db: Path) -> dict[str, dict[str, Any]]:
    return {row["ghl_id"]: row for row in contact_rows(db) if row["ghl_id"]}


def statuses(db: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in contact_rows(db):
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return counts


def high_water(cli: Cli, location_id: str | None = None) -> str:
    data = cli.json("status")
    wanted = location_id or cli.location_id
    location = next(loc for loc in data["locations"] if loc["location_id"] == wanted)
    stamp = location["cursor"]["high_water"]
    assert stamp, data
    return str(stamp)


def database_bytes(db: Path) -> dict[str, bytes | None]:
    """The database file and, if present, its WAL, byte for byte."""
    wal = db.with_name(db.name + "-wal")
    return {"db": db.read_bytes(), "wal": wal.read_bytes() if wal.exists() else None}


def synced(cli: Cli, sandbox: Sandbox, count: int, *, seed: int) -> list[dict[str, Any]]:
    """Seed the sandbox, connect and initial-sync; returns the sandbox contacts."""
    sandbox.seed(count, seed=seed)
    cli.connect()
    report = cli.json("initial-sync")
    assert report["pull"]["created"] == count
    return sandbox.list_contacts()


# ---- incremental pulls --------------------------------------------------------------------------


def test_one_percent_changed_costs_calls_in_proportion_to_the_changes(
    cli: Cli, sandbox: Sandbox
) -> None:
    sandbox.seed(5000, seed=11)
    cli.connect()
    sandbox.stats.reset()
    initial = cli.json("initial-sync")
    initial_calls = sandbox.stats.requests(SEARCH)
    assert initial_calls >= 10 and initial["api_calls"] == initial_calls

    changed = sandbox.list_contacts()[::100]
    assert len(changed) == 50
    for n, contact in enumerate(changed):
        sandbox.ui_update_contact(contact["id"], {"city": f"Changed {n}", "companyName": "New Co"})
    sandbox.stats.reset()
    report = cli.json("reconcile")

    calls = sandbox.stats.snapshot()
    assert calls["requests"] == {SEARCH: report["api_calls"]}
    assert report["api_calls"] <= 2 < initial_calls
    assert report["pull"]["updated"] == 50
    assert report["pull"]["fetched"] < 100  # the changes plus the overlap window, not 5,000
    rows = by_ghl_id(cli.db)
    for n, contact in enumerate(changed):
        assert (rows[contact["id"]]["city"], rows[contact["id"]]["company"]) == (
            f"Changed {n}",
            "New Co",
        )
    assert sum(row["company"] == "New Co" for row in rows.values()) == 50

    sandbox.stats.reset()
    again = cli.json("reconcile")
    assert again["api_calls"] == 1 == sandbox.stats.requests(SEARCH)
    assert again["pull"]["updated"] == again["pull"]["created"] == 0


def test_a_change_in_ghl_without_a_webhook_is_picked_up(cli: Cli, sandbox: Sandbox) -> None:
    contacts = synced(cli, sandbox, 40, seed=12)
    edited = contacts[7]
    sandbox.ui_update_contact(edited["id"], {"email": "moved@example.com", "tags": ["moved"]})
    created = sandbox.ui_create_contact({"firstName": "Nova", "email": "nova@example.com"})
    assert sandbox.webhooks.settings.url is None  # nobody is told about the edits
    rows = by_ghl_id(cli.db)
    assert rows[edited["id"]]["email"] != "moved@example.com"
    assert created["id"] not in rows

    result = cli("reconcile")
    assert result.exit_code == 0, result.output
    assert "1 created" in result.stdout and "1 updated" in result.stdout

    rows = by_ghl_id(cli.db)
    assert rows[edited["id"]]["email"] == "moved@example.com"
    assert json.loads(rows[edited["id"]]["tags"]) == ["moved"]
    assert rows[created["id"]]["first_name"] == "Nova"
    assert rows[created["id"]]["status"] == "active"


# ---- overlapping runs ---------------------------------------------------------------------------


def test_an_overlapping_run_exits_75_at_once(cli: Cli, sandbox: Sandbox) -> None:
    synced(cli, sandbox, 20, seed=13)
    sandbox.stats.reset()
    with location_lock(cli.db, cli.location_id):
        started = time.monotonic()
        result = cli("reconcile")
        elapsed = time.monotonic() - started
    assert result.exit_code == 75, result.output
    assert elapsed < 1.0
    assert f"Error: Another ghlsync run is working on location {cli.location_id}." in (
        result.stderr
    )
    assert "Hint: It will finish on its own; this run can simply be retried later." in (
        result.stderr
    )
    assert sandbox.stats.snapshot()["total"] == 0  # it gave up before talking to GHL
    assert cli("reconcile").exit_code == 0  # and once the lock is free, it runs


def test_a_second_timer_run_during_a_slow_reconcile_exits_75(cli: Cli, sandbox: Sandbox) -> None:
    synced(cli, sandbox, 20, seed=14)
    sandbox.faults.set_rules(
        [FaultRule(path_regex="^/contacts/search$", mode="delay", delay_ms=1500, count=1)]
    )
    sandbox.stats.reset()
    with cli.spawn("reconcile") as first:
        wait_until(lambda: sandbox.stats.requests(SEARCH) >= 1, what="the first run's search")
        started = time.monotonic()
        second = cli("reconcile")
        elapsed = time.monotonic() - started
        _, err = first.communicate(timeout=60)
    assert second.exit_code == 75, second.output
    assert elapsed < 1.0
    assert "Another ghlsync run is working on location" in second.stderr
    assert first.returncode == 0, err
    assert sandbox.stats.requests(SEARCH) == 1  # the second run never reached GHL


def test_a_run_killed_with_sigkill_leaves_no_stale_lock(cli: Cli, sandbox: Sandbox) -> None:
    contacts = synced(cli, sandbox, 20, seed=15)
    sandbox.ui_update_contact(contacts[0]["id"], {"city": "After The Kill"})
    sandbox.faults.set_rules(
        [FaultRule(path_regex="^/contacts/search$", mode="delay", delay_ms=2000, count=1)]
    )
    sandbox.stats.reset()
    with cli.spawn("reconcile") as victim:
        wait_until(lambda: sandbox.stats.requests(SEARCH) >= 1, what="the run's search")
        assert cli("reconcile").exit_code == 75  # it holds the lock
        os.kill(victim.pid, signal.SIGKILL)
        victim.communicate(timeout=10)
    assert victim.returncode == -signal.SIGKILL

    result = cli("reconcile", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["pull"]["updated"] == 1
    assert by_ghl_id(cli.db)[contacts[0]["id"]]["city"] == "After The Kill"
    runs = cli.json("status")["locations"][0]["last_runs"]
    assert runs["reconcile"]["outcome"] == "ok"


# ---- full sweeps and deletions ------------------------------------------------------------------


def test_full_sweep_soft_deletes_a_contact_deleted_in_ghl(cli: Cli, sandbox: Sandbox) -> None:
    contacts = synced(cli, sandbox, 100, seed=16)
    gone = contacts[42]
    before = by_ghl_id(cli.db)[gone["id"]]
    sandbox.ui_delete_contact(gone["id"])

    assert cli("reconcile").exit_code == 0  # an incremental pull cannot see a deletion
    assert by_ghl_id(cli.db)[gone["id"]]["status"] == "active"

    report = cli.json("reconcile", "--full")
    assert report["pull"]["soft_deleted"] == 1 == report["would_soft_delete"]
    after = by_ghl_id(cli.db)[gone["id"]]
    assert after["status"] == "inactive"
    for name in ("id", "first_name", "last_name", "email", "phone", "company", "tags"):
        assert after[name] == before[name], name  # data kept
    assert statuses(cli.db) == {"active": 99, "inactive": 1}
    shown = cli.json("contacts", "show", before["id"])
    assert shown["status"] == "inactive" and shown["ghl_id"] == gone["id"]

    assert cli.json("reconcile", "--full")["pull"]["soft_deleted"] == 0  # idempotent


def test_full_sweep_refuses_a_mass_deletion_unless_forced(cli: Cli, sandbox: Sandbox) -> None:
    contacts = synced(cli, sandbox, 500, seed=17)
    for contact in contacts[::10] + contacts[1::10] + contacts[2::10]:
        sandbox.ui_delete_contact(contact["id"])
    assert sandbox.count_contacts() == 350

    refused = cli("reconcile", "--full")
    assert refused.exit_code == 75, refused.output
    assert "Error: Refusing to mark 150 of 500 contacts inactive (the limit is 50)." in (
        refused.stderr
    )
    assert "Hint: Check the location and token; if this is expected, rerun with --force" in (
        refused.stderr
    )
    assert statuses(cli.db) == {"active": 500}

    capped = cli("reconcile", "--full", "--max-delete", "149")
    assert capped.exit_code == 75, capped.output
    assert "(the limit is 149)" in capped.stderr
    assert statuses(cli.db) == {"active": 500}

    forced = cli.json("reconcile", "--full", "--force")
    assert forced["pull"]["soft_deleted"] == 150
    assert statuses(cli.db) == {"active": 350, "inactive": 150}

    for contact in contacts[3:50:10]:
        sandbox.ui_delete_contact(contact["id"])
    assert cli("reconcile", "--full", "--max-delete", "4").exit_code == 75
    allowed = cli.json("reconcile", "--full", "--max-delete", "5")
    assert allowed["pull"]["soft_deleted"] == 5 and allowed["delete_limit"] == 5
    assert statuses(cli.db) == {"active": 345, "inactive": 155}


def test_a_local_tombstone_survives_a_full_reconcile(cli: Cli, sandbox: Sandbox) -> None:
    contacts = synced(cli, sandbox, 30, seed=18)
    target = contacts[5]
    local_id = by_ghl_id(cli.db)[target["id"]]["id"]
    result = cli("contacts", "delete", local_id, "--yes")
    assert result.exit_code == 0, result.output
    sandbox.ui_update_contact(target["id"], {"city": "Tempting"})  # a reason to pull it again
    sandbox.stats.reset()

    report = cli.json("reconcile", "--full")
    assert report["pull"]["soft_deleted"] == 0
    assert report["push"]["created"] == report["push"]["updated"] == 0
    assert cli.json("reconcile")["pull"]["created"] == 0

    assert cli.json("contacts", "show", local_id)["status"] == "deleted"
    assert statuses(cli.db) == {"active": 29, "deleted": 1}
    assert sum(row["ghl_id"] == target["id"] for row in contact_rows(cli.db)) == 1
    still_in_ghl = sandbox.find_contact(target["id"])
    assert still_in_ghl is not None and still_in_ghl["city"] == "Tempting"
    assert set(sandbox.stats.snapshot()["requests"]) == {SEARCH}  # nothing written to GHL


# ---- dry run ------------------------------------------------------------------------------------


def test_dry_run_changes_nothing_and_reports_the_plan(cli: Cli, sandbox: Sandbox) -> None:
    contacts = synced(cli, sandbox, 200, seed=19)
    sandbox.ui_create_contact({"firstName": "Planned", "email": "planned@example.com"})
    sandbox.ui_update_contact(contacts[1]["id"], {"city": "Remote One"})
    sandbox.ui_update_contact(contacts[2]["id"], {"city": "Remote Two"})
    sandbox.ui_delete_contact(contacts[3]["id"])
    # Another program edits the SQLite file: that queues a push.
    conn = sqlite3.connect(cli.db)
    with conn:
        conn.execute(
            "UPDATE contacts SET city = 'Local Edit' WHERE ghl_id = ?", (contacts[4]["id"],)
        )
    conn.close()

    files_before = database_bytes(cli.db)
    ghl_before = sandbox.list_contacts()
    sandbox.stats.reset()

    plan = cli.json("reconcile", "--full", "--dry-run")
    assert plan["dry_run"] is True
    assert plan["pull"]["created"] == 1
    assert plan["pull"]["updated"] == 2
    assert plan["would_soft_delete"] == 1
    assert plan["pending_pushes"] == 1

    text = cli("reconcile", "--full", "--dry-run")
    assert text.exit_code == 0, text.output
    assert "dry run — nothing changed." in text.stdout
    assert "Plan: 1 creates, 2 updates, 1 soft-deletes, 1 pushes." in text.stdout

    assert database_bytes(cli.db) == files_before
    assert sandbox.list_contacts() == ghl_before
    assert set(sandbox.stats.snapshot()["requests"]) == {SEARCH}  # reads only

    applied = cli.json("reconcile", "--full")
    assert (applied["pull"]["created"], applied["pull"]["updated"]) == (1, 2)
    assert applied["pull"]["soft_deleted"] == 1
    assert applied["push"]["updated"] == 1
    assert sandbox.find_contact(contacts[4]["id"])["city"] == "Local Edit"  # type: ignore[index]


def test_a_dry_run_does_not_block_other_writers(cli: Cli, sandbox: Sandbox) -> None:
    # While a dry run waits on GHL, the webhook receiver and local edits must still be able to
    # write: "changes nothing" includes not holding the database's write lock across network calls.
    synced(cli, sandbox, 300, seed=24)
    local_id = cli.json("contacts", "list", "--limit", "1")[0]["id"]
    sandbox.faults.set_rules(
        [FaultRule(path_regex="^/contacts/search$", mode="delay", delay_ms=1500, count=1, skip=1)]
    )
    sandbox.stats.reset()
    with cli.spawn("reconcile", "--full", "--dry-run", GHLSYNC_PAGE_LIMIT="100") as dry:
        # The second page is being delayed: the dry run is mid-way.
        wait_until(lambda: sandbox.stats.requests(SEARCH) >= 2, what="the dry run's second page")
        edit = cli(
            "contacts", "update", local_id, "--city", "Meanwhile", GHLSYNC_BUSY_TIMEOUT_MS="300"
        )
        _, err = dry.communicate(timeout=60)
    assert dry.returncode == 0, err
    assert edit.exit_code == 0, edit.output
    assert cli.json("contacts", "show", local_id)["city"] == "Meanwhile"


# ---- several locations --------------------------------------------------------------------------

SECOND_LOCATION = "sandboxLocation00002"
SECOND_TOKEN = "sandbox-token-second"


def test_all_reconciles_every_connected_location(
    cli: Cli, sandbox: Sandbox, memory_keyring: MemoryKeyring
) -> None:
    # Two locations need two tokens: GHLSYNC_TOKEN is one, so both go through the keyring.
    sandbox.add_location(SECOND_LOCATION, SECOND_TOKEN)
    sandbox.seed(30, seed=20)
    sandbox.seed(20, seed=21, location_id=SECOND_LOCATION)
    keyed = Cli(db=cli.db, api_base=cli.api_base, token=None)
    for location_id, token in ((cli.location_id, DEFAULT_TOKEN), (SECOND_LOCATION, SECOND_TOKEN)):
        result = keyed("connect", "--location-id", location_id, "--token-stdin", input=token + "\n")
        assert result.exit_code == 0, result.output
    assert len(memory_keyring.secrets) == 2

    reports = keyed.json("reconcile", "--all")
    assert [(r["location_id"], r["pull"]["created"]) for r in reports] == [
        (cli.location_id, 30),
        (SECOND_LOCATION, 20),
    ]

    first = sandbox.list_contacts()[0]
    second = sandbox.list_contacts(location_id=SECOND_LOCATION)[0]
    sandbox.ui_update_contact(first["id"], {"city": "First City"})
    sandbox.ui_update_contact(second["id"], {"city": "Second City"}, location_id=SECOND_LOCATION)
    reports = keyed.json("reconcile", "--all")
    assert [r["pull"]["updated"] for r in reports] == [1, 1]
    rows = by_ghl_id(cli.db)
    assert rows[first["id"]]["city"] == "First City"
    assert rows[first["id"]]["location_id"] == cli.location_id
    assert rows[second["id"]]["city"] == "Second City"
    assert rows[second["id"]]["location_id"] == SECOND_LOCATION

    ambiguous = keyed("reconcile")
    assert ambiguous.exit_code == 78, ambiguous.output
    assert "Several locations are connected" in ambiguous.stderr

    # One location busy: the other is still reconciled, and the run exits 75.
    sandbox.ui_update_contact(first["id"], {"city": "First Again"})
    with location_lock(cli.db, SECOND_LOCATION):
        busy = keyed("reconcile", "--all", "--json")
    assert busy.exit_code == 75, busy.output
    assert [r["location_id"] for r in json.loads(busy.stdout)] == [cli.location_id]
    assert f"{SECOND_LOCATION}: Another ghlsync run is working on location" in busy.stderr
    assert by_ghl_id(cli.db)[first["id"]]["city"] == "First Again"


# ---- the cursor ---------------------------------------------------------------------------------


def test_the_cursor_never_moves_backwards(cli: Cli, sandbox: Sandbox) -> None:
    contacts = synced(cli, sandbox, 100, seed=22)
    marks = [high_water(cli)]

    def run(*args: str) -> dict[str, Any]:
        report: dict[str, Any] = cli.json("reconcile", *args)
        marks.append(high_water(cli))
        assert marks[-1] >= marks[-2], marks
        return report

    run()
    assert marks[-1] == marks[-2]  # nothing changed: the overlap window re-read nothing newer
    sandbox.ui_update_contact(contacts[0]["id"], {"city": "Later"})
    assert run()["high_water"] == marks[-1] > marks[-2]
    # Contacts that reach GHL with old timestamps (an import) are older than the cursor: a full
    # sweep picks them up without pulling the cursor back to their dates.
    sandbox.seed(10, seed=23, replace=False)
    assert run("--full")["pull"]["created"] == 10
    assert marks[-1] == marks[-2]
    sandbox.ui_update_contact(contacts[1]["id"], {"city": "Dry"})
    run("--dry-run")
    assert marks[-1] == marks[-2]  # a dry run moves nothing
    run()
    assert marks[-1] > marks[-2]
