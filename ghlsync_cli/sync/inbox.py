"""The one pipeline for every webhook body, used by ``serve`` and ``replay-webhook`` alike.

1. ``receive``: store the raw body and its headers in ``inbox`` (deduplicated by ``webhookId``, else
   by a hash of the body) and commit. Only then may ``serve`` answer 200: nothing acknowledged can
   be lost.
2. ``process_pending``: apply stored events in arrival order, each together with its inbox status
   in one transaction, so a crash between the two cannot apply an event twice or skip it.

``replay`` (``ghlsync_cli.sync.replay``: saved files, nothing to acknowledge) does both for a
chunk of bodies in one transaction: the bodies are stored and applied together, or not at all.

Routing: contact events go through the same merge as every pull; ``ContactDelete`` soft-deletes;
install events are logged; uninstall disconnects the location; an unknown location or type is
recorded as skipped, not an error.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError as PydanticValidationError

from ghlsync_cli.errors import InputError, StorageError
from ghlsync_cli.ghl.models import GhlContact, validate_contact
from ghlsync_cli.jsontext import dumps
from ghlsync_cli.store import Store
from ghlsync_cli.sync.engine import SyncEngine
from ghlsync_cli.timeutil import utc_now
from ghlsync_cli.webhooks import (
    CONTACT_EVENTS,
    DELETE_EVENTS,
    INSTALL_EVENTS,
    UNINSTALL_EVENTS,
    WebhookEvent,
    parse_event,
)

# The outcome of an uninstall event for a connected location.
DISCONNECTED = "disconnected"
# Events applied per transaction (see process_pending).
CHUNK_EVENTS = 100
# Inbox columns a pending event is routed by; the body is read only when it was not parsed yet.
_ROUTING_COLUMNS = "id, location_id, type, headers"
# How merge outcomes read to someone replaying webhooks.
_OUTCOMES = {
    "created": "created",
    "flagged": "created",
    "linked": "updated",
    "updated": "updated",
    "unchanged": "unchanged",
    "skipped:tombstone": "skipped: deleted locally",
    "skipped:stale": "skipped: not newer than what was applied",
}


@dataclass(frozen=True)
class Receipt:
    """A body stored in the inbox; ``duplicate`` when it had been received before."""

    inbox_id: int
    duplicate: bool
    event: WebhookEvent


@dataclass(frozen=True)
class Processed:
    """What applying one stored event did."""

    inbox_id: int
    type: str
    location_id: str | None
    contact_id: str | None
    outcome: str


def receive(store: Store, event: WebhookEvent, *, now: str | None = None) -> Receipt:
    """Store one event in the inbox (committed on return); a duplicate is recognised, not stored."""
    return receive_many(store, [event], now=now)[0]


def receive_many(
    store: Store, events: Sequence[WebhookEvent], *, now: str | None = None
) -> list[Receipt]:
    """``receive`` for many bodies in order, with one commit for all of them (or none, inside
    the caller's transaction: ``replay`` applies them in the same one).

    For replays, where nothing is acknowledged between two bodies: a commit per body would cost
    more than storing it. ``serve`` receives one body per request, and commits each.
    """
    received_at = now or utc_now()
    with store.write():
        # New rows get ids above every existing one: that tells them from bodies stored before.
        newest = int(store.scalar("SELECT coalesce(max(id), 0) FROM inbox"))
        store.executemany(
            "INSERT OR IGNORE INTO inbox "
            "(dedup_key, received_at, location_id, type, body, headers) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [
                (e.dedup_key, received_at, e.location_id, e.type, e.raw, dumps(e.headers))
                for e in events
            ],
        )
        ids: dict[str, int] = dict(
            store.rows_in(
                "SELECT dedup_key, id FROM inbox WHERE dedup_key IN", [e.dedup_key for e in events]
            )
        )
    receipts: list[Receipt] = []
    seen: set[str] = set()
    for event in events:
        inbox_id = ids[event.dedup_key]
        # Stored before, or earlier in this same batch.
        duplicate = inbox_id <= newest or event.dedup_key in seen
        seen.add(event.dedup_key)
        receipts.append(Receipt(inbox_id=inbox_id, duplicate=duplicate, event=event))
    return receipts


def process_pending(
    store: Store,
    *,
    region: str = "US",
    now: Callable[[], str] = utc_now,
    limit: int | None = None,
    only: int | None = None,
    parsed: Mapping[int, WebhookEvent] | None = None,
) -> list[Processed]:
    """Apply pending inbox events in arrival order (or just inbox row ``only``).

    ``parsed``: events by inbox id, already parsed from those rows' stored bodies (``replay``
    stores bodies and applies them at once); other rows' bodies are parsed here.

    Each fetched chunk (up to 100 events) is applied in one transaction together with the inbox
    statuses: one commit per chunk instead of one per event, and still no event applied twice or
    skipped across a crash (the chunk commits or rolls back whole). See ``_process_chunk``.
    """
    done: list[Processed] = []
    while limit is None or len(done) < limit:
        if only is not None:
            rows = store.query(
                f"SELECT {_ROUTING_COLUMNS} FROM inbox WHERE id = ? AND status = 'pending'",
                (only,),
            )
        else:
            rows = store.query(
                f"SELECT {_ROUTING_COLUMNS} FROM inbox WHERE status = 'pending' "
                "ORDER BY id LIMIT ?",
                (CHUNK_EVENTS,),
            )
        if not rows:
            break
        if limit is not None:
            rows = rows[: limit - len(done)]
        known = parsed or {}
        # The bodies of rows not parsed yet, in one query.
        bodies = dict(
            store.rows_in(
                "SELECT id, body FROM inbox WHERE id IN",
                [row["id"] for row in rows if row["id"] not in known],
            )
        )
        events = [  # no lock needed for parsing
            (row, known[row["id"]] if row["id"] in known else _parse_stored(row, bodies[row["id"]]))
            for row in rows
        ]
        with store.write():
            done.extend(_process_chunk(store, events, region=region, now=now))
        if only is not None:
            break
    return done


def backlog(store: Store) -> int:
    """Events stored but not yet applied."""
    return int(store.scalar("SELECT count(*) FROM inbox WHERE status = 'pending'"))


@dataclass(frozen=True)
class _Change:
    """A stored contact change, checked and ready to merge along with others."""

    row: dict[str, Any]
    event: WebhookEvent
    location_id: str
    contact: GhlContact


def _process_chunk(
    store: Store,
    parsed: Sequence[tuple[dict[str, Any], WebhookEvent | InputError]],
    *,
    region: str,
    now: Callable[[], str],
) -> list[Processed]:
    """Apply a chunk of stored events in arrival order (inside the caller's transaction).

    Consecutive contact changes (create, update, dnd, tags) of one connected location, each for a
    different contact, are merged as one run: one query for the contacts, one for their base
    copies, one statement per kind of write. Any other event, or a contact seen again, ends the
    run first, so every event still sees the effect of the ones before it. If merging a run
    fails, it is rolled back and its events are applied one by one (``_process_row``), so only
    the bad event is marked failed, exactly as without runs.
    """
    done: list[Processed] = []
    run: list[_Change] = []
    in_run: set[str] = set()  # GHL ids of the contacts in the run
    statuses = _statuses(store, [row["id"] for row, _ in parsed])
    locations: dict[str, dict[str, Any] | None] = {}
    for row, event in parsed:
        change = None
        if statuses.get(row["id"]) == "pending" and isinstance(event, WebhookEvent):
            change = _as_change(store, row, event, locations)
        if change is not None and (
            not run
            or (change.location_id == run[0].location_id and change.contact.id not in in_run)
        ):
            run.append(change)
            in_run.add(change.contact.id)
            continue
        done.extend(_merge_run(store, run, region=region, now=now))
        run, in_run = [], set()
        if change is not None:
            run.append(change)
            in_run.add(change.contact.id)
            continue
        done.append(_process_row(store, row, event, region=region, now=now))
        locations.clear()  # the event may have connected or disconnected a location
    done.extend(_merge_run(store, run, region=region, now=now))
    return done


def _statuses(store: Store, inbox_ids: Sequence[int]) -> dict[int, str]:
    marks = ",".join("?" * len(inbox_ids))
    return {
        int(inbox_id): str(status)
        for inbox_id, status in store.execute(
            f"SELECT id, status FROM inbox WHERE id IN ({marks})", tuple(inbox_ids)
        ).fetchall()
    }


def _as_change(
    store: Store,
    row: dict[str, Any],
    event: WebhookEvent,
    locations: dict[str, dict[str, Any] | None],
) -> _Change | None:
    """The event as a contact change to merge in a run, or None to route it on its own.

    The checks are ``apply_event``'s, in its order; whatever they turn away is routed by it.
    """
    location_id = event.location_id
    if event.type not in CONTACT_EVENTS or location_id is None:
        return None
    if location_id not in locations:
        locations[location_id] = store.get_location(location_id)
    location = locations[location_id]
    if location is None or location["disconnected_at"]:
        return None
    try:
        contact = validate_contact(event.contact_payload)
    except PydanticValidationError:
        return None
    return _Change(row=row, event=event, location_id=location_id, contact=contact)


def _merge_run(
    store: Store, run: Sequence[_Change], *, region: str, now: Callable[[], str]
) -> list[Processed]:
    """Merge a run of contact changes (one location, distinct contacts) and record the outcomes."""
    if not run:
        return []
    engine = SyncEngine(store, None, location_id=run[0].location_id, region=region, now=now)
    try:
        with store.write():  # a savepoint: a failed run leaves no partial change
            applied = engine.apply_remote(
                [c.contact for c in run],
                complete=False,
                source="webhook",
                event_times={c.contact.id: c.event.event_time for c in run},
            )
    except StorageError:
        raise  # the database itself failed: the events stay pending and are retried
    except Exception:  # one of the events is bad: apply them one by one to find it
        return [_process_row(store, c.row, c.event, region=region, now=now) for c in run]
    done = [
        Processed(c.row["id"], c.event.type, c.location_id, contact_id, replay_outcome(o))
        for c, o, contact_id in zip(run, applied.outcomes, applied.contact_ids, strict=True)
    ]
    processed_at = now()
    store.executemany(
        "UPDATE inbox SET status = ?, outcome = ?, processed_at = ? WHERE id = ?",
        [(inbox_status(p.outcome), p.outcome, processed_at, p.inbox_id) for p in done],
    )
    return done


def inbox_status(outcome: str) -> str:
    """The inbox status of an event applied with this outcome."""
    return "skipped" if outcome.startswith("skipped") else "applied"


def replay_outcome(merged: str) -> str:
    """How a merge outcome reads to someone replaying webhooks."""
    return _OUTCOMES.get(merged, merged)


def _parse_stored(row: dict[str, Any], body: bytes) -> WebhookEvent | InputError:
    try:
        return parse_event(bytes(body), json.loads(row["headers"] or "{}"))
    except InputError as exc:
        return exc


def _process_row(
    store: Store,
    row: dict[str, Any],
    event: WebhookEvent | InputError,
    *,
    region: str,
    now: Callable[[], str],
) -> Processed:
    """Apply one stored event (inside the caller's write transaction) and record its outcome."""
    if isinstance(event, InputError):
        # Stored bodies were parsed once already; one that no longer parses must not block the rest.
        store.execute(
            "UPDATE inbox SET status = 'skipped', outcome = ?, processed_at = ? WHERE id = ?",
            (f"skipped: unreadable ({event.message})", now(), row["id"]),
        )
        return Processed(row["id"], str(row["type"]), row["location_id"], None, "skipped")
    # Another worker may have taken it meanwhile; the status check inside the lock decides.
    status = store.scalar("SELECT status FROM inbox WHERE id = ?", (row["id"],))
    if status != "pending":
        outcome = store.scalar("SELECT outcome FROM inbox WHERE id = ?", (row["id"],))
        return Processed(row["id"], event.type, event.location_id, None, str(outcome))
    try:
        with store.write():  # a savepoint: a failed event leaves no partial change
            contact_id, outcome = apply_event(store, event, region=region, now=now)
        state = "skipped" if outcome.startswith("skipped") else "applied"
    except StorageError:
        raise  # the database itself failed: the event stays pending and is retried
    except Exception as exc:  # one bad event must never block the inbox
        contact_id, outcome, state = None, f"failed: {type(exc).__name__}: {exc}", "failed"
    store.execute(
        "UPDATE inbox SET status = ?, outcome = ?, processed_at = ? WHERE id = ?",
        (state, outcome, now(), row["id"]),
    )
    return Processed(row["id"], event.type, event.location_id, contact_id, outcome)


def apply_event(
    store: Store, event: WebhookEvent, *, region: str, now: Callable[[], str] = utc_now
) -> tuple[str | None, str]:
    """Route one event (inside the caller's transaction): (local contact id, outcome)."""
    location_id = event.location_id
    if event.type in INSTALL_EVENTS:
        return None, "logged"
    if location_id is None:
        return None, "skipped: no locationId"
    location = store.get_location(location_id)
    if location is None or location["disconnected_at"]:
        return None, f"skipped: location {location_id} not connected"
    if event.type in UNINSTALL_EVENTS:
        store.mark_disconnected(location_id, now=now())
        return None, DISCONNECTED
    if event.type not in CONTACT_EVENTS | DELETE_EVENTS:
        return None, f"skipped: unsupported type {event.type}"
    try:
        contact = validate_contact(event.contact_payload)
    except PydanticValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return None, f"skipped: not a contact ({problems})"
    engine = SyncEngine(store, None, location_id=location_id, region=region, now=now)
    if event.type in DELETE_EVENTS:
        found = store.contacts_by_ghl_ids(location_id, [contact.id]).get(contact.id)
        if found is None:
            return None, "skipped: contact not in the database"
        count = engine.soft_delete_remote([contact.id], remote_updated_at=event.event_time)
        return found["id"], "soft_deleted" if count else "unchanged"
    applied = engine.apply_remote(
        [contact], complete=False, source="webhook", event_times={contact.id: event.event_time}
    )
    outcome = applied.outcomes[0]
    return applied.contact_ids[0], replay_outcome(outcome)
