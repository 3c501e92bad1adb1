"""Runs sync work against GHL and the store: pulls (initial-sync, reconcile), pushes, soft deletes.

How a pull stays safe to interrupt: each page is merged and its cursor saved in one transaction,
so a rerun resumes after the last committed page; merging is idempotent, so re-reading a page is
harmless.

How a push stays duplicate-free: a create is marked in the outbox (committed) before it is sent. If
the process dies after GHL created the contact but before the link was committed, the retry sees the
mark and finds the contact instead of creating it again: ``/contacts/upsert`` dedupes by email or
phone; a contact with neither is looked up by name among contacts added since the first attempt.

Terminology:
    contact      a row of the local ``contacts`` table; ``ghl_id`` links it to a GHL contact
    base         per contact, the synced values both sides last agreed on (``sync_state.base``)
    outbox       contacts whose local values differ from the base and must be pushed
    high water   the newest GHL ``dateUpdated`` merged; reconcile asks for changes since it
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple, Protocol

from ghlsync_cli.crashpoints import crash_point
from ghlsync_cli.errors import (
    ApiError,
    MassDeleteRefusedError,
    NotFoundError,
    UnavailableError,
)
from ghlsync_cli.gcpause import PeriodicCollection, gc_paused
from ghlsync_cli.ghl.models import GhlContact, SearchResponse, UpsertResponse
from ghlsync_cli.mapping import (
    OUTBOUND_FIELDS,
    SCALAR_OUTBOUND,
    SYNC_FIELDS,
    from_ghl,
    join_name,
    normalize_email,
    normalize_phone,
    normalize_values,
    raw_extras,
    to_ghl,
)
from ghlsync_cli.store import Linked, NewContact, Statement, Store, contact_id_for
from ghlsync_cli.sync.feed import PageFeed
from ghlsync_cli.sync.merge import (
    MergeResult,
    empty_value,
    local_values,
    merge_row,
    pending_changes,
)
from ghlsync_cli.timeutil import normalize_time, shift, utc_now

INITIAL = "initial"
RECONCILE = "reconcile"
# A pull commits every page as it is merged, or, while pages arrive faster than they merge, up to
# this many contacts at once: each commit rewrites every index page it touched (see sync.feed).
# Contact ids are hashes, so a few thousand contacts already touch most index pages of a big
# location, and a commit (with the WAL checkpoint it triggers) costs nearly the same for 4,000
# contacts as for 10,000: at 100k contacts, 10,000 per commit saves a sixth of the SQLite time.
# At full speed that holds the write lock for under a second at a time.
GROUP_CONTACTS = 10_000
# Contacts a pull fetches ahead of the merging, at most (whole pages, at least one).
AHEAD_CONTACTS = 500
# A pull frees the reference cycles its HTTP responses leave once per this many contacts (see
# ghlsync_cli.gcpause): a few MiB of response bodies wait for it at most.
COLLECT_CONTACTS = 2_500
# Uncertain creates are looked up among contacts GHL added from this long before the first attempt.
CREATE_LOOKBACK_SECONDS = 300


class ContactsApi(Protocol):
    """The part of GHLClient the engine uses (a Protocol, so tests can pass any fake)."""

    request_count: int

    def iter_contact_pages(
        self,
        *,
        page_limit: int = 500,
        search_after: list[int | float | str] | None = None,
        updated_since: str | None = None,
    ) -> Iterator[SearchResponse]: ...

    def search_contacts(
        self,
        *,
        page_limit: int = 500,
        search_after: list[int | float | str] | None = None,
        updated_since: str | None = None,
        sort_field: str = "dateUpdated",
        direction: str = "asc",
        extra_filters: list[dict[str, object]] | None = None,
        query: str | None = None,
    ) -> SearchResponse: ...

    def upsert_contact(self, fields: dict[str, object]) -> UpsertResponse: ...

    def update_contact(self, ghl_id: str, fields: dict[str, object]) -> GhlContact | None: ...

    def add_tags(self, ghl_id: str, tags: list[str]) -> list[str]: ...

    def remove_tags(self, ghl_id: str, tags: list[str]) -> list[str]: ...

    def get_contact(self, ghl_id: str) -> GhlContact: ...


Progress = Callable[[str, int, int | None], None]
"""(phase, done, total) — total is None when unknown."""


def no_progress(phase: str, done: int, total: int | None) -> None:
    """A ``Progress`` that shows nothing."""
    return None


@dataclass
class PullCounts:
    """What merging GHL contacts did locally."""

    fetched: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    linked: int = 0
    conflicts: int = 0
    flagged: int = 0
    skipped: int = 0
    soft_deleted: int = 0

    def add(self, outcome: str, count: int = 1) -> None:
        """Count a contact's outcome (``skipped:<reason>`` counts as skipped)."""
        name = outcome.partition(":")[0]
        setattr(self, name, getattr(self, name) + count)

    def absorb(self, applied: Applied) -> None:
        """Count a merged batch."""
        for outcome, count in Counter(applied.outcomes).items():
            self.add(outcome, count)
        self.conflicts += applied.conflicts


@dataclass
class Applied:
    """Outcome of merging a batch of GHL contacts: one outcome per contact, conflicts recorded.

    ``contact_ids`` holds, for each outcome, the local contact now linked to that GHL contact.
    """

    outcomes: list[str]
    conflicts: int = 0
    contact_ids: list[str] = field(default_factory=list)


@dataclass
class MergeWrites:
    """The writes one merged batch makes, gathered after the merge decided them all: written at
    once by the merging thread, or handed to a writer thread (``ghlsync_cli.sync.replay``)."""

    now: str
    location_id: str
    updates: list[tuple[str, Mapping[str, Any]]] = field(default_factory=list)
    new_contacts: list[NewContact] = field(default_factory=list)
    new_states: list[tuple[str, Mapping[str, Any], str | None]] = field(default_factory=list)
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    to_push: list[str] = field(default_factory=list)
    settled: list[str] = field(default_factory=list)

    def apply(self, store: Store) -> None:
        """Write them (inside the caller's transaction)."""
        store.run(self.statements(store))

    def statements(self, store: Store, *, one_statement: bool = False) -> list[Statement]:
        """The statements that write them. ``one_statement``: each kind of write as one
        statement (see ``Store.rows_statements``), for a thread beside a busy one."""
        return [
            *store.contact_update_statements(self.updates, one_statement=one_statement),
            *store.new_contact_statements(self.new_contacts, now=self.now),
            *store.state_statements(self.new_states, now=self.now, one_statement=one_statement),
            *store.conflict_statements(self.conflicts, one_statement=one_statement),
            *store.enqueue_statements(
                self.to_push,
                self.location_id,
                reason="merge",
                now=self.now,
                one_statement=one_statement,
            ),
            *store.dequeue_statements(self.settled, one_statement=one_statement),
        ]


@dataclass
class PushCounts:
    """What pushing local changes did."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    queued: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)


class PushRefusedError(Exception):
    """GHL answered a push in a way ghlsync must not apply; recorded on the contact as a
    permanent push error (and a flag), so it is counted as failed, not retried."""


@dataclass
class SyncReport:
    """The result of one initial-sync or reconcile, rendered by the CLI."""

    kind: str
    location_id: str
    pull: PullCounts = field(default_factory=PullCounts)
    push: PushCounts = field(default_factory=PushCounts)
    pages: int = 0
    total: int | None = None
    api_calls: int = 0
    resumed: bool = False
    dry_run: bool = False
    high_water: str | None = None
    would_soft_delete: int = 0
    delete_limit: int | None = None
    delete_refused: bool = False
    pending_pushes: int = 0
    push_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


# Matching an unlinked local contact to a GHL contact: by email first, then by phone.
_MATCH_KEYS = ("email", "phone")


@dataclass
class _Candidates:
    """Unlinked local contacts by match key (email or phone) and value, fetched once per batch.

    A contact linked while the batch is merged is ``claimed``: no longer a candidate, exactly as
    a fresh query would no longer find it.
    """

    by_key: dict[str, dict[str, list[dict[str, Any]]]]
    claimed: set[str] = field(default_factory=set)
    # Unlinked contacts whose create was sent but never confirmed (``Store.uncertain_creates``).
    uncertain: list[dict[str, Any]] = field(default_factory=list)

    def find(self, name: str, key: str) -> list[dict[str, Any]]:
        """Unclaimed candidates whose ``name`` matches ``key``, oldest first."""
        return [r for r in self.by_key[name].get(key, ()) if r["id"] not in self.claimed]

    @property
    def is_empty(self) -> bool:
        """Whether there is no candidate at all (then every unlinked GHL contact is new)."""
        return not self.uncertain and not any(self.by_key.values())


@dataclass(slots=True)
class _Incoming:
    contact: GhlContact
    values: dict[str, Any]
    raw: dict[str, Any]
    remote_updated_at: str | None
    # The contact encoded as a new one, when prepared ahead (initial-sync: nearly all are new).
    new_contact: NewContact | None = None
    # The local id it gets if it is new (see _assign_ids).
    contact_id: str | None = None


class _PreparedPage(NamedTuple):
    page: SearchResponse
    incoming: list[_Incoming]
    high_water: str | None  # the page's newest dateUpdated


class SyncEngine:
    """Sync one location: ``store`` is the local side, ``client`` the GHL side (None = offline)."""

    def __init__(
        self,
        store: Store,
        client: ContactsApi | None,
        *,
        location_id: str,
        region: str = "US",
        now: Callable[[], str] = utc_now,
        progress: Progress | None = None,
    ) -> None:
        self.store = store
        self.client = client
        self.location_id = location_id
        self.region = region
        self.now = now
        self.progress = progress or no_progress

    # ---- inbound ------------------------------------------------------------------------------

    def apply_remote(
        self,
        contacts: Sequence[GhlContact],
        *,
        complete: bool,
        source: str,
        event_times: Mapping[str, str | None] | None = None,
    ) -> Applied:
        """Merge GHL contacts into the store (inside the caller's transaction); outcome per contact.

        Outcomes: created, linked (matched an unlinked local contact), updated, unchanged,
        skipped:tombstone, skipped:stale (not newer than what was applied), flagged (created, but
        the match was ambiguous). ``event_times`` overrides a contact's ``dateUpdated`` for ordering
        (webhooks carry the event's ``timestamp`` instead).
        """
        incoming = self._prepare(contacts, complete, event_times or {})
        return self._merge(incoming, complete=complete, source=source)

    def plan_linked(
        self,
        contacts: Sequence[GhlContact],
        found: Linked,
        *,
        event_times: Mapping[str, str | None],
    ) -> tuple[Applied, MergeWrites]:
        """``apply_remote`` for webhook payloads of contacts already linked, planned from rows read
        before (``found``), and written by the caller (``MergeWrites.apply``).

        For a writer that reads ahead (``ghlsync_cli.sync.replay``): the merge is the same one,
        only the reads and the writes are the caller's. Every contact must be in ``found``.
        """
        incoming = self._prepare(contacts, False, event_times)
        missing = [i.contact.id for i in incoming if i.contact.id not in found.contacts]
        if missing:
            raise ValueError(f"not linked: {missing[:3]}")
        return self._plan(incoming, complete=False, source="webhook", found=found)

    def _merge(self, incoming: Sequence[_Incoming], *, complete: bool, source: str) -> Applied:
        """``apply_remote`` for prepared contacts (pulls prepare them in the read-ahead thread)."""
        applied, writes = self._plan(incoming, complete=complete, source=source)
        writes.apply(self.store)
        return applied

    def _plan(
        self,
        incoming: Sequence[_Incoming],
        *,
        complete: bool,
        source: str,
        found: Linked | None = None,
    ) -> tuple[Applied, MergeWrites]:
        """The outcomes of merging ``incoming`` and the writes that carry them out.

        Reads what it needs (unless ``found`` holds the linked rows already); matching and linking
        a contact not linked yet write at once. Nothing in it reads a row the batch changes.
        """
        now = self.now()
        ids = [i.contact.id for i in incoming]
        if found is None:
            existing = self.store.contacts_by_ghl_ids(self.location_id, ids)
            states = self.store.get_states([row["id"] for row in existing.values()])
            agreed: frozenset[str] = frozenset()
        else:
            existing, states, agreed = found
        unlinked = [i for i in incoming if i.contact.id not in existing]
        self._assign_ids(unlinked)
        candidates = self._candidates(unlinked)
        # No candidate now means none for the whole batch (matching only ever removes them).
        no_candidates = candidates.is_empty
        outcomes: list[str] = []
        contact_ids: list[str] = []
        writes = MergeWrites(now=now, location_id=self.location_id)
        new_contacts = writes.new_contacts
        updates = writes.updates
        new_states = writes.new_states
        conflicts = writes.conflicts
        for item in incoming:
            row = existing.get(item.contact.id)
            outcome = "updated"
            if row is None:
                row, outcome = (
                    (None, "created") if no_candidates else self._match(item, now, candidates)
                )
                if row is None:
                    new = item.new_contact or self._new_contact(item)
                    new_contacts.append(new)
                    outcomes.append(outcome)
                    contact_ids.append(new.contact_id)
                    continue
                states.update(self.store.get_states([row["id"]]))
            state = states.get(row["id"])
            if row["status"] == "deleted":
                # A local tombstone is never resurrected; keep the base current so nothing pushes.
                kept = {**(state or {}).get("base", {}), **item.values}
                new_states.append((row["id"], kept, item.remote_updated_at))
                outcomes.append("skipped:tombstone")
                contact_ids.append(row["id"])
                continue
            if _is_stale(item.remote_updated_at, state, complete=complete):
                outcomes.append("skipped:stale")
                contact_ids.append(row["id"])
                continue
            base = state["base"] if state else None
            # (a row read as holding its base copy: local_values of it is the base)
            local = base if row["id"] in agreed and base is not None else local_values(row, base)
            result = merge_row(local, base, item.values, self.region)
            changes = self._row_changes(
                row, result, item, reactivate=complete or source == "webhook"
            )
            if len(changes) > ("raw" in changes):  # more than raw changed
                changes["updated_at"] = now
            elif outcome == "updated":
                # Only GHL keys ghlsync does not map changed: kept, but not a change to report.
                outcome = "unchanged"
            if changes:
                updates.append((row["id"], changes))
            new_states.append((row["id"], result.base, item.remote_updated_at))
            if result.conflicts:
                conflicts.extend(
                    {
                        "contact_id": row["id"],
                        "location_id": self.location_id,
                        "field": c.field,
                        "local_value": c.local_value,
                        "ghl_value": c.ghl_value,
                        "base_value": c.base_value,
                        "source": source,
                        "detected_at": now,
                    }
                    for c in result.conflicts
                )
            (writes.to_push if result.needs_push else writes.settled).append(row["id"])
            outcomes.append(outcome)
            contact_ids.append(row["id"])
        return Applied(outcomes=outcomes, conflicts=len(conflicts), contact_ids=contact_ids), writes

    @contextmanager
    def _pull_feed(
        self, pages: Iterator[SearchResponse], *, page_limit: int, expect_new: bool
    ) -> Iterator[PageFeed[_PreparedPage]]:
        """A pull's pages, fetched and prepared ahead of the merging (``_prepared``), with what
        bulk merging runs under: the cyclic collector paused, statement journals in memory."""
        with (
            gc_paused(),
            self.store.temp_in_memory(),
            PageFeed(
                self._prepared(pages, expect_new=expect_new), ahead=_pages_ahead(page_limit)
            ) as feed,
        ):
            yield feed

    def _prepared(
        self, pages: Iterator[SearchResponse], *, expect_new: bool
    ) -> Iterator[_PreparedPage]:
        """Pulled pages with their contacts prepared for merging.

        Run by the read-ahead thread: preparing (normalising values, and with ``expect_new`` also
        encoding each contact as a new row) is pure Python that then overlaps with the merging
        thread's SQLite work, which runs without the GIL.
        """
        for page in pages:
            incoming = self._prepare(page.contacts, True, {})
            if expect_new:
                for item in incoming:
                    item.new_contact = self._new_contact(item)
            yield _PreparedPage(page, incoming, _max_time(None, page.contacts))

    def _prepare(
        self,
        contacts: Sequence[GhlContact],
        complete: bool,
        event_times: Mapping[str, str | None],
    ) -> list[_Incoming]:
        # The same GHL id twice in one batch (overlapping pages): the later copy wins.
        latest: dict[str, _Incoming] = {}
        region = self.region
        for contact in contacts:
            ghl_id = contact.id
            latest.pop(ghl_id, None)
            # (contact, values, raw, remote_updated_at: by position, as a class given keywords
            # builds a dict of them first, per contact)
            latest[ghl_id] = _Incoming(
                contact,
                from_ghl(contact, complete=complete, region=region),
                raw_extras(contact),
                event_times.get(ghl_id) or normalize_time(contact.dateUpdated),
            )
        return list(latest.values())

    def _candidates(self, unmatched: Sequence[_Incoming]) -> _Candidates:
        """The unlinked local contacts that GHL contacts not linked yet may match, per batch."""
        if not unmatched or not self.store.has_unlinked(self.location_id):
            # Nothing to match against (the usual case in a pull): no more queries. (The one
            # check for the batch: Store.unlinked_by_keys does not repeat it.)
            return _Candidates({name: {} for name in _MATCH_KEYS})
        self._normalize_unlinked_keys()
        return _Candidates(
            {
                name: self.store.unlinked_by_keys(
                    self.location_id, name, [i.values.get(name) for i in unmatched]
                )
                for name in _MATCH_KEYS
            },
            uncertain=self.store.uncertain_creates(self.location_id),
        )

    def _normalize_unlinked_keys(self) -> None:
        """Store the normalised email and phone of contacts another program wrote padded
        (" bob@example.com ") or as typed ("(212) 555-0101"), so that matching finds those
        contacts instead of creating a second copy of them."""
        for contact_id, email, phone in self.store.unlinked_keys_to_normalize(self.location_id):
            stripped, e164 = normalize_email(email), normalize_phone(phone, self.region)
            changed: dict[str, str | None] = {}
            if stripped != email:
                changed["email"] = stripped
            if e164 != phone:
                changed["phone"] = e164
            if changed:
                self.store.update_contact(contact_id, changed)

    def _match(
        self, item: _Incoming, now: str, pool: _Candidates
    ) -> tuple[dict[str, Any] | None, str]:
        """Find an unlinked local contact for a GHL contact: email first, then phone, then one of
        our own creates that was interrupted before its answer was saved."""
        for name in _MATCH_KEYS:
            key = item.values.get(name)
            if not key:
                continue
            candidates = pool.find(name, key)
            if len(candidates) == 1:
                return self._link(candidates[0], item, pool), "linked"
            if len(candidates) > 1:
                # Never merge on an ambiguous match: create the GHL contact apart and flag it.
                new_id = item.contact_id or contact_id_for(self.location_id, item.contact.id)
                detail = f"{len(candidates)} local contacts share this {name}: " + ", ".join(
                    c["id"] for c in candidates
                )
                self.store.add_flag(new_id, "ambiguous_match", detail, now=now)
                return None, "flagged"
        row = self._own_uncertain_create(item, pool)
        if row is not None:
            # What the create sent is what GHL holds from us: the base copy, so that an edit made
            # since is a local change (tags are added after a create: not known to be there).
            sent = {f: v for f, v in self._sent_by_create(row).items() if f != "tags"}
            self.store.save_state(row["id"], base=sent, remote_updated_at=None, now=now)
            return self._link(row, item, pool), "linked"
        return None, "created"

    def _assign_ids(self, items: Sequence[_Incoming]) -> None:
        """Give each GHL contact not linked yet the local id it gets if it turns out new: the one
        derived from its GHL id, or, when another contact already holds that one (in the
        database or earlier in this batch), the next free derivation. One query per batch."""
        derived = [
            item.new_contact.contact_id
            if item.new_contact is not None
            else contact_id_for(self.location_id, item.contact.id)
            for item in items
        ]
        taken = self.store.taken_ids(derived)
        for item, contact_id in zip(items, derived, strict=True):
            attempt = 0
            while contact_id in taken:
                attempt += 1
                contact_id = contact_id_for(self.location_id, item.contact.id, attempt)
                taken |= self.store.taken_ids([contact_id])
            taken.add(contact_id)
            item.contact_id = contact_id
            if item.new_contact is not None and item.new_contact.contact_id != contact_id:
                item.new_contact = item.new_contact.with_id(contact_id)

    def _link(self, row: dict[str, Any], item: _Incoming, pool: _Candidates) -> dict[str, Any]:
        self.store.update_contact(row["id"], {"ghl_id": item.contact.id})
        row["ghl_id"] = item.contact.id
        pool.claimed.add(row["id"])
        return row

    def _own_uncertain_create(self, item: _Incoming, pool: _Candidates) -> dict[str, Any] | None:
        """The local contact whose interrupted create made this GHL contact, if exactly one fits.

        A create is marked before it is sent. If the process died before GHL's answer was
        committed, a pull or GHL's ContactCreate webhook may see the new contact before the push
        is retried; unrecognised, it would become a second local copy (and, for a contact with no
        email or phone, the retried push a second GHL contact). Same test as the push side's
        ``_find_uncertain_create``: added since shortly before the first attempt, same values.
        """
        if not pool.uncertain:
            return None
        added = normalize_time(item.contact.dateAdded)
        if added is None:
            return None
        fits = [
            row
            for row in pool.uncertain
            if row["id"] not in pool.claimed
            and added >= shift(row["create_started_at"], seconds=-CREATE_LOOKBACK_SECONDS)
            and all(
                item.values.get(f, empty_value(f)) == value
                for f, value in self._sent_by_create(row).items()
                if f in SCALAR_OUTBOUND
            )
        ]
        return fits[0] if len(fits) == 1 else None

    def _sent_by_create(self, row: dict[str, Any]) -> dict[str, Any]:
        """The normalised values an interrupted create of ``row`` sent."""
        return _first_sent(row["create_values"], normalize_values(local_values(row), self.region))

    def _new_contact(self, item: _Incoming) -> NewContact:
        """A GHL contact as a new local contact; its base copy is what GHL sent."""
        given = item.values
        values = (
            given  # from a complete payload: every field is there
            if len(given) == len(SYNC_FIELDS)
            else {n: given[n] if n in given else empty_value(n) for n in SYNC_FIELDS}
        )
        row = {
            "id": item.contact_id or contact_id_for(self.location_id, item.contact.id),
            "location_id": self.location_id,
            "ghl_id": item.contact.id,
            **values,
            "name": join_name(values["first_name"], values["last_name"]),
            "status": "active",
            "raw": item.raw,
        }
        return NewContact.encode(row, given, item.remote_updated_at)

    def _row_changes(
        self, row: Mapping[str, Any], result: MergeResult, item: _Incoming, *, reactivate: bool
    ) -> dict[str, Any]:
        changes: dict[str, Any] = {
            name: value for name, value in result.values.items() if row.get(name) != value
        }
        name = join_name(result.values["first_name"], result.values["last_name"])
        if row.get("name") != name:
            changes["name"] = name
        if item.raw:
            raw = {**row.get("raw", {}), **item.raw}
            if raw != row.get("raw"):
                changes["raw"] = raw
        if reactivate and row.get("status") == "inactive":
            changes["status"] = "active"
        return changes

    def soft_delete_remote(
        self, ghl_ids: Iterable[str], *, remote_updated_at: str | None = None
    ) -> int:
        """GHL deleted these contacts: mark the linked local ones inactive (data kept)."""
        now = self.now()
        found = self.store.contacts_by_ghl_ids(self.location_id, list(ghl_ids))
        count = 0
        for row in found.values():
            if row["status"] != "active":
                continue
            self.store.update_contact(row["id"], {"status": "inactive", "updated_at": now})
            self.store.dequeue(row["id"])
            if remote_updated_at:
                state = self.store.get_state(row["id"])
                self.store.save_state(
                    row["id"],
                    base=(state or {}).get("base", {}),
                    remote_updated_at=remote_updated_at,
                    now=now,
                )
            count += 1
        return count

    # ---- pulls --------------------------------------------------------------------------------

    def initial_sync(self, *, page_limit: int = 500) -> SyncReport:
        """Pull every GHL contact (resuming an interrupted run), then push local-only contacts."""
        client = self._require_client()
        report = SyncReport(kind="initial-sync", location_id=self.location_id)
        with self._recorded_run(report, client):
            cursor = self.store.get_cursor(self.location_id, INITIAL)
            if cursor and not cursor["completed_at"]:
                report.resumed = True
                report.pull.fetched = cursor["fetched"]
                search_after = cursor["search_after"]
                high_water = cursor["high_water"]
            else:
                search_after, high_water = None, None
                with self.store.write():
                    self.store.delete_cursor(self.location_id, INITIAL)
                    self.store.save_cursor(
                        self.location_id,
                        INITIAL,
                        fetched=0,
                        started_at=self.now(),
                        updated_at=self.now(),
                    )
            done = report.pull.fetched
            garbage = PeriodicCollection(COLLECT_CONTACTS)
            pages = client.iter_contact_pages(page_limit=page_limit, search_after=search_after)
            with self._pull_feed(pages, page_limit=page_limit, expect_new=True) as feed:
                for group in feed.groups(max_items=_group_pages(page_limit)):
                    merged = 0
                    group_start = done
                    last: SearchResponse | None = None
                    # A group of pages commits together (see sync.feed), so the cursor saved
                    # with it is its last page's: a rerun resumes after that page.
                    with self.store.write():
                        for page, incoming, page_high_water in group:
                            report.total = page.total
                            self.progress("pull", done, page.total)
                            if not page.contacts:
                                break
                            report.pull.absorb(
                                self._merge(incoming, complete=True, source="initial-sync")
                            )
                            high_water = _later(high_water, page_high_water)
                            done += len(page.contacts)
                            last = page
                            merged += 1
                            self.progress("pull", done, page.total)
                        if last is not None:
                            self.store.save_cursor(
                                self.location_id,
                                INITIAL,
                                search_after=last.contacts[-1].searchAfter,
                                high_water=high_water,
                                fetched=done,
                                total=last.total,
                                updated_at=self.now(),
                            )
                    report.pages += merged
                    report.pull.fetched = done
                    garbage.done(done - group_start)
            with self.store.write():
                self.store.save_cursor(self.location_id, INITIAL, completed_at=self.now())
                self._advance_high_water(high_water)
            report.high_water = high_water
            self._drain(report)
        return report

    def reconcile(
        self,
        *,
        full: bool = False,
        dry_run: bool = False,
        max_delete: int | None = None,
        force: bool = False,
        page_limit: int = 500,
        overlap_seconds: int = 300,
    ) -> SyncReport:
        """Pull changes since the high water (or everything with ``full``), then drain the queue."""
        client = self._require_client()
        report = SyncReport(
            kind="reconcile --full" if full else "reconcile",
            location_id=self.location_id,
            dry_run=dry_run,
        )
        if dry_run:
            calls_before = client.request_count
            # Plan on a private in-memory copy: the real file is never written or write-locked
            # (serve keeps storing webhooks meanwhile), and the plan is exactly what a run would do.
            snapshot = self.store.snapshot()
            try:
                planner = SyncEngine(
                    snapshot,
                    client,
                    location_id=self.location_id,
                    region=self.region,
                    now=self.now,
                    progress=self.progress,
                )
                planner._reconcile(
                    report, full, max_delete, force, page_limit, overlap_seconds, True
                )
            finally:
                snapshot.close()
            report.api_calls = client.request_count - calls_before
            return report
        with self._recorded_run(report, client):
            self._reconcile(report, full, max_delete, force, page_limit, overlap_seconds, False)
        return report

    def _reconcile(
        self,
        report: SyncReport,
        full: bool,
        max_delete: int | None,
        force: bool,
        page_limit: int,
        overlap_seconds: int,
        dry_run: bool,
    ) -> None:
        client = self._require_client()
        cursor = self.store.get_cursor(self.location_id, RECONCILE)
        high_water = cursor["high_water"] if cursor else None
        since = None
        if high_water and not full:
            since = shift(high_water, seconds=-overlap_seconds)
        seen: set[str] = set()
        done = 0
        garbage = PeriodicCollection(COLLECT_CONTACTS)
        pages = client.iter_contact_pages(page_limit=page_limit, updated_since=since)
        with self._pull_feed(pages, page_limit=page_limit, expect_new=False) as feed:
            for group in feed.groups(max_items=_group_pages(page_limit)):
                merged: list[SearchResponse] = []
                group_start = done
                # A group of pages commits together (see sync.feed).
                with self.store.write():
                    for page, incoming, page_high_water in group:
                        report.total = page.total
                        if not page.contacts:
                            break
                        report.pull.absorb(self._merge(incoming, complete=True, source="reconcile"))
                        high_water = _later(high_water, page_high_water)
                        self._advance_high_water(high_water)
                        merged.append(page)
                for page in merged:
                    seen.update(c.id for c in page.contacts)
                    done += len(page.contacts)
                    report.pages += 1
                    report.pull.fetched = done
                    self.progress("pull", done, page.total)
                garbage.done(done - group_start)
        report.high_water = high_water
        if full:
            self._sweep_deleted(report, seen, max_delete=max_delete, force=force, dry_run=dry_run)
        if dry_run:
            self._queue_unlinked()
            report.pending_pushes = len(self.store.pending_pushes(self.location_id))
            return
        self._drain(report)

    def _sweep_deleted(
        self,
        report: SyncReport,
        seen: set[str],
        *,
        max_delete: int | None,
        force: bool,
        dry_run: bool = False,
    ) -> None:
        linked = self.store.linked_ghl_ids(self.location_id, statuses=("active",))
        missing = sorted(g for g in linked if g not in seen)
        report.would_soft_delete = len(missing)
        if not missing:
            return
        limit = max_delete if max_delete is not None else default_max_delete(len(linked))
        report.delete_limit = limit
        if len(missing) > limit and not force:
            if dry_run:
                report.delete_refused = True
                return
            raise MassDeleteRefusedError(would_delete=len(missing), limit=limit, total=len(linked))
        with self.store.write():
            report.pull.soft_deleted += self.soft_delete_remote(missing)

    def _advance_high_water(self, high_water: str | None) -> None:
        if high_water is None:
            return
        cursor = self.store.get_cursor(self.location_id, RECONCILE)
        current = cursor["high_water"] if cursor else None
        if current is None or high_water > current:
            self.store.save_cursor(
                self.location_id, RECONCILE, high_water=high_water, updated_at=self.now()
            )

    @contextmanager
    def _recorded_run(self, report: SyncReport, client: ContactsApi) -> Iterator[None]:
        """Record the run in ``sync_runs``: started now, finished with its outcome and counts."""
        calls_before = client.request_count
        with self.store.write():
            self.store.close_stale_runs(self.location_id, now=self.now())
            run_id = self.store.start_run(self.location_id, report.kind, now=self.now())
        try:
            yield
        except BaseException as exc:
            report.api_calls = client.request_count - calls_before
            self._finish(run_id, report, exc)
            raise
        report.api_calls = client.request_count - calls_before
        self._finish(run_id, report, None)

    def _finish(self, run_id: int, report: SyncReport, exc: BaseException | None) -> None:
        counts = {
            **asdict(report.pull),
            **{f"push_{k}": v for k, v in asdict(report.push).items() if k != "errors"},
        }
        counts.update(pages=report.pages, api_calls=report.api_calls)
        if exc is None:
            outcome, error = ("ok" if report.push_error is None else "queued"), report.push_error
        elif isinstance(exc, KeyboardInterrupt):
            outcome, error = "interrupted", "interrupted"
        else:
            outcome, error = "failed", str(exc) or type(exc).__name__
        try:
            with self.store.write():
                self.store.finish_run(
                    run_id, outcome=outcome, counts=counts, now=self.now(), error=error
                )
        except Exception:
            if exc is None:
                raise

    def _require_client(self) -> ContactsApi:
        if self.client is None:
            raise UnavailableError("No GHL client: this location is not connected.")
        return self.client

    # ---- push ---------------------------------------------------------------------------------

    def _drain(self, report: SyncReport) -> None:
        """Push every queued contact; GHL being unreachable leaves the rest queued."""
        self._queue_unlinked()
        try:
            self.push(report.push, pulled=True)
        except UnavailableError as exc:
            report.push_error = exc.message
        report.push.queued = len(self.store.pending_pushes(self.location_id))

    def _queue_unlinked(self) -> None:
        """Local-only contacts (never linked, not deleted, not queued) go in the queue."""
        with self.store.write():
            self.store.execute(
                "INSERT OR IGNORE INTO outbox (contact_id, location_id, queued_at, reason) "
                "SELECT id, location_id, ?, 'local-only' FROM contacts "
                "WHERE location_id = ? AND ghl_id IS NULL AND status = 'active'",
                (self.now(), self.location_id),
            )

    def push(
        self,
        counts: PushCounts | None = None,
        contact_ids: Sequence[str] | None = None,
        *,
        pulled: bool = False,
    ) -> PushCounts:
        """Push queued contacts (or just ``contact_ids``); a permanent error parks only that one.

        ``pulled``: every GHL change was pulled just before (a sync's own drain), so an update
        need not read the contact's GHL copy first. Raises UnavailableError (the rest stays
        queued) when GHL cannot be reached.
        """
        counts = counts or PushCounts()
        ids = (
            list(contact_ids)
            if contact_ids is not None
            else self.store.pending_pushes(self.location_id)
        )
        for index, contact_id in enumerate(ids):
            self.progress("push", index, len(ids))
            try:
                outcome = self.push_contact(contact_id, pulled=pulled)
            except UnavailableError:
                raise
            except PushRefusedError as exc:  # already recorded on the contact
                counts.failed += 1
                counts.errors.append({"contact_id": contact_id, "error": str(exc)})
                continue
            except ApiError as exc:
                if not exc.is_permanent:
                    raise
                message = "; ".join([exc.message, *exc.details])
                with self.store.write():
                    self.store.record_push_error(
                        contact_id, message=message, permanent=True, now=self.now()
                    )
                counts.failed += 1
                counts.errors.append({"contact_id": contact_id, "error": message})
                continue
            setattr(counts, outcome, getattr(counts, outcome) + 1)
        self.progress("push", len(ids), len(ids))
        return counts

    def push_contact(self, contact_id: str, *, pulled: bool = False) -> str:
        """Send one contact's local changes to GHL; returns created, updated or unchanged.

        An update first merges the contact's GHL copy (unless ``pulled``), as a pull would: a
        field changed on both sides since the last sync is GHL's, with a conflict, and is not
        overwritten by the push; only what is still the local side's own change is sent.
        """
        client = self._require_client()
        row = self.store.get_contact(contact_id)
        if row is None or row["status"] != "active":
            # Tombstones are never deleted in GHL; inactive contacts no longer exist there.
            with self.store.write():
                self.store.dequeue(contact_id)
            return "unchanged"
        if row["ghl_id"] is None:
            outcome = self._push_create(
                client, row, normalize_values(local_values(row), self.region)
            )
            if self.store.get_outbox(contact_id) is not None:
                # Edited since a create it retried (what GHL holds is what the create sent).
                self.push_contact(contact_id, pulled=True)
            return outcome
        state = self.store.get_state(contact_id)
        base = state["base"] if state else {}
        values = normalize_values(local_values(row, base), self.region)
        changes = pending_changes(values, base)
        if not changes:
            with self.store.write():
                self._store_local_normalisation(row, values)
                self.store.dequeue(contact_id)
            return "unchanged"
        if not pulled:
            try:
                contact = client.get_contact(row["ghl_id"])
            except NotFoundError:
                return self._deleted_in_ghl(row["ghl_id"])
            with self.store.write():
                self.apply_remote([contact], complete=True, source="push")
            return self.push_contact(contact_id, pulled=True)
        return self._push_update(client, row, values, base, changes)

    def _push_create(self, client: ContactsApi, row: dict[str, Any], values: dict[str, Any]) -> str:
        """Create the contact in GHL (upsert) and link it.

        A retry after an interrupted attempt sends what the first attempt sent, not the values
        the contact was edited to since, so that it finds the contact that attempt may have made
        (GHL's duplicate rules, or a search when there is no email or phone); an edit made since
        is then pushed as an update (``push_contact``).
        """
        outbox = self.store.get_outbox(row["id"])
        found: GhlContact | None = None
        twin: dict[str, Any] | None = None
        if outbox and outbox["create_started_at"]:
            values = _first_sent(outbox["create_values"], values)
            if not (values["email"] or values["phone"]):
                found = self._find_uncertain_create(client, values, outbox["create_started_at"])
        else:
            # GHL's duplicate rules would match the contact another local row is linked to (same
            # email, else phone) and the upsert would overwrite it: refused before anything is sent.
            twin = self.store.linked_twin(self.location_id, values["email"], values["phone"])
        refused: str | None = None
        with self.store.write():
            if self.store.get_outbox(row["id"]) is None:
                self.store.enqueue(row["id"], self.location_id, reason="local", now=self.now())
            if twin is not None:
                refused = self._refuse_as_duplicate(row["id"], twin["ghl_id"], twin["id"])
            else:
                self.store.mark_create_started(row["id"], now=self.now(), values=values)
        if refused is not None:
            raise PushRefusedError(refused)
        if found is None:
            body = to_ghl(values, for_create=True)
            body.pop("tags", None)
            response = client.upsert_contact(body)
            found = response.contact
            crash_point("after-create-response")
        tags_to_add = sorted(set(values["tags"]) - set(found.tags or []))
        remote_tags = client.add_tags(found.id, tags_to_add) if tags_to_add else None
        with self.store.write():
            taken = self.store.contacts_by_ghl_ids(self.location_id, [found.id])
            if taken and taken[found.id]["id"] != row["id"]:
                # GHL's duplicate rules matched a contact another local row is linked to.
                refused = self._refuse_as_duplicate(row["id"], found.id, taken[found.id]["id"])
            else:
                self.store.update_contact(
                    row["id"], {"ghl_id": found.id, "raw": {**row["raw"], **raw_extras(found)}}
                )
                remote = from_ghl(found, complete=True, region=self.region)
                if remote_tags is not None:
                    remote["tags"] = sorted(set(remote_tags))
                sent = {f: values[f] for f in OUTBOUND_FIELDS if values[f] not in (None, [])}
                self._settle(row, values, sent, remote, normalize_time(found.dateUpdated))
        if refused is not None:
            raise PushRefusedError(refused)
        return "created"

    def _refuse_as_duplicate(self, contact_id: str, ghl_id: str, other: str) -> str:
        """Flag a create GHL's duplicate rules match to ``ghl_id``, which local ``other`` is linked
        to, and park its push (until the contact changes); the reason."""
        self.store.add_flag(
            contact_id,
            "duplicate_in_ghl",
            f"GHL matches it to contact {ghl_id}, already linked to local {other}",
            now=self.now(),
        )
        refused = f"duplicate of local contact {other} in GHL"
        self.store.record_push_error(contact_id, message=refused, permanent=True, now=self.now())
        return refused

    def _find_uncertain_create(
        self, client: ContactsApi, values: Mapping[str, Any], started_at: str
    ) -> GhlContact | None:
        """Look for a contact an interrupted create may have made (no email/phone to upsert on)."""
        name = join_name(values["first_name"], values["last_name"])
        page = client.search_contacts(
            page_limit=100,
            sort_field="dateAdded",
            direction="asc",
            extra_filters=[
                {
                    "field": "dateAdded",
                    "operator": "range",
                    "value": {"gte": shift(started_at, seconds=-CREATE_LOOKBACK_SECONDS)},
                }
            ],
            query=name,
        )
        linked = self.store.contacts_by_ghl_ids(self.location_id, [c.id for c in page.contacts])
        for contact in page.contacts:
            remote = from_ghl(contact, complete=True, region=self.region)
            same = all(remote[f] == values[f] for f in SCALAR_OUTBOUND)
            if same and contact.id not in linked:
                return contact
        return None

    def _push_update(
        self,
        client: ContactsApi,
        row: dict[str, Any],
        values: dict[str, Any],
        base: Mapping[str, Any],
        changes: Mapping[str, Any],
    ) -> str:
        ghl_id = row["ghl_id"]
        scalar = {f: v for f, v in changes.items() if f != "tags"}
        remote: dict[str, Any] = {}
        remote_updated_at: str | None = None
        try:
            if scalar:
                updated = client.update_contact(ghl_id, to_ghl(scalar))
                if updated is not None:
                    full = from_ghl(updated, complete=True, region=self.region)
                    remote.update({f: full[f] for f in scalar})
                    remote_updated_at = normalize_time(updated.dateUpdated)
                else:
                    remote.update(scalar)
            if "tags" in changes:
                was = set(base.get("tags") or [])
                now_tags = set(values["tags"])
                tags: list[str] | None = None
                if now_tags - was:
                    tags = client.add_tags(ghl_id, sorted(now_tags - was))
                if was - now_tags:
                    tags = client.remove_tags(ghl_id, sorted(was - now_tags))
                remote["tags"] = sorted(set(tags)) if tags is not None else sorted(now_tags)
        except NotFoundError:
            return self._deleted_in_ghl(ghl_id)
        with self.store.write():
            self._settle(row, values, dict(changes), remote, remote_updated_at)
        return "updated"

    def _deleted_in_ghl(self, ghl_id: str) -> str:
        """A push found the contact deleted in GHL: the same as a ContactDelete; its outcome."""
        with self.store.write():
            self.soft_delete_remote([ghl_id])
        return "unchanged"

    def _settle(
        self,
        row: dict[str, Any],
        values: dict[str, Any],
        sent: dict[str, Any],
        remote: dict[str, Any],
        remote_updated_at: str | None,
    ) -> None:
        """After GHL accepted a push: the base becomes what GHL holds; GHL's normalisation lands
        locally unless the contact changed again meanwhile (then it stays queued)."""
        current = self.store.get_contact(row["id"])
        assert current is not None
        state = self.store.get_state(row["id"])
        old_base = dict(state["base"]) if state else {}
        # What we sent is, from GHL's side, the agreed value; merge GHL's answer on top of it.
        agreed = {**old_base, **sent}
        result = merge_row(local_values(current, old_base), agreed, remote, self.region)
        base = {**agreed, **result.base}
        changes: dict[str, Any] = {f: v for f, v in result.values.items() if current.get(f) != v}
        name = join_name(result.values["first_name"], result.values["last_name"])
        if current.get("name") != name:
            changes["name"] = name
        if changes:
            changes["updated_at"] = self.now()
            self.store.update_contact(row["id"], changes)
        self.store.save_state(
            row["id"], base=base, remote_updated_at=remote_updated_at, now=self.now()
        )
        if pending_changes(result.values, base):
            self.store.enqueue(row["id"], self.location_id, reason="local", now=self.now())
        else:
            self.store.dequeue(row["id"])

    def _store_local_normalisation(self, row: Mapping[str, Any], values: Mapping[str, Any]) -> None:
        """Write back normalised values (E.164 phone, split name) another program stored raw."""
        changes = {f: values[f] for f in SYNC_FIELDS if row.get(f) != values[f]}
        name = join_name(values["first_name"], values["last_name"])
        if row.get("name") != name:
            changes["name"] = name
        if changes:
            self.store.update_contact(row["id"], changes)


def _first_sent(recorded: Mapping[str, Any] | None, values: dict[str, Any]) -> dict[str, Any]:
    """What a create's first attempt sent: as recorded, else (recorded by an older version, or
    unreadable) the contact's values now."""
    if recorded is None or set(recorded) != set(values):
        return values
    return dict(recorded)


def _pages_ahead(page_limit: int) -> int:
    """How many pages a pull fetches ahead of the merging, at most (see sync.feed)."""
    return max(1, AHEAD_CONTACTS // max(1, page_limit))


def _group_pages(page_limit: int) -> int:
    """How many pages, at most, one transaction of a pull merges (when they arrive that fast)."""
    return max(1, GROUP_CONTACTS // max(1, page_limit))


def default_max_delete(linked: int) -> int:
    """The mass-delete guard: 10% of linked contacts, at most 500 (at least 1)."""
    return max(1, min(500, math.floor(linked * 0.10)))


def _is_stale(
    remote_updated_at: str | None, state: Mapping[str, Any] | None, *, complete: bool
) -> bool:
    """Older than what was applied; for a partial payload (a webhook) the same instant too.

    An event stamped with the very moment already applied brings nothing newer: typically GHL's
    echo of our own create, sent before the tags we added next. A full object (search) of the same
    moment is merged anyway, which is idempotent.
    """
    applied = state.get("remote_updated_at") if state else None
    if not (remote_updated_at and applied):
        return False
    return remote_updated_at < applied or (remote_updated_at == applied and not complete)


def _later(current: str | None, other: str | None) -> str | None:
    """The later of two stored timestamps (None is earlier than any)."""
    if other is not None and (current is None or other > current):
        return other
    return current


def _max_time(current: str | None, contacts: Sequence[GhlContact]) -> str | None:
    best = current
    for contact in contacts:
        stamp = normalize_time(contact.dateUpdated)
        if stamp and (best is None or stamp > best):
            best = stamp
    return best
