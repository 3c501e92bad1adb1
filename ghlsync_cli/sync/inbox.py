"""The one pipeline for every webhook body, used by ``serve`` and ``replay-webhook`` alike.

1. ``receive``: store the raw body and its headers in ``inbox`` (deduplicated by ``webhookId``, else
   by a hash of the body) and commit. Only then may ``serve`` answer 200: nothing acknowledged can
   be lost.
2. ``process_pending``: apply stored events in arrival order, each together with its inbox status
   in one transaction, so a crash between the two cannot apply an event twice or skip it.

Routing: contact events go through the same merge as every pull; ``ContactDelete`` soft-deletes;
install events are logged; uninstall disconnects the location; an unknown location or type is
recorded as skipped, not an error.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError as PydanticValidationError

from ghlsync_cli.errors import InputError, StorageError
from ghlsync_cli.ghl.models import GhlContact
from ghlsync_cli.store import Store, dumps
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
    with store.write():
        cursor = store.execute(
            "INSERT OR IGNORE INTO inbox (dedup_key, received_at, location_id, type, body, headers)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                event.dedup_key,
                now or utc_now(),
                event.location_id,
                event.type,
                event.raw,
                dumps(event.headers),
            ),
        )
        duplicate = cursor.rowcount == 0
        inbox_id = int(store.scalar("SELECT id FROM inbox WHERE dedup_key = ?", (event.dedup_key,)))
    return Receipt(inbox_id=inbox_id, duplicate=duplicate, event=event)


def process_pending(
    store: Store,
    *,
    region: str = "US",
    now: Callable[[], str] = utc_now,
    limit: int | None = None,
    only: int | None = None,
) -> list[Processed]:
    """Apply pending inbox events in arrival order (or just inbox row ``only``)."""
    done: list[Processed] = []
    while limit is None or len(done) < limit:
        if only is not None:
            rows = store.query("SELECT * FROM inbox WHERE id = ? AND status = 'pending'", (only,))
        else:
            rows = store.query("SELECT * FROM inbox WHERE status = 'pending' ORDER BY id LIMIT 100")
        if not rows:
            break
        for row in rows:
            done.append(_process_row(store, row, region=region, now=now))
            if limit is not None and len(done) >= limit:
                break
        if only is not None:
            break
    return done


def backlog(store: Store) -> int:
    """Events stored but not yet applied."""
    return int(store.scalar("SELECT count(*) FROM inbox WHERE status = 'pending'"))


def _process_row(
    store: Store, row: dict[str, Any], *, region: str, now: Callable[[], str]
) -> Processed:
    try:
        event = parse_event(bytes(row["body"]), json.loads(row["headers"] or "{}"))
    except InputError as exc:
        # Stored bodies were parsed once already; one that no longer parses must not block the rest.
        with store.write():
            store.execute(
                "UPDATE inbox SET status = 'skipped', outcome = ?, processed_at = ? WHERE id = ?",
                (f"skipped: unreadable ({exc.message})", now(), row["id"]),
            )
        return Processed(row["id"], str(row["type"]), row["location_id"], None, "skipped")
    with store.write():
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
        return None, "disconnected"
    if event.type not in CONTACT_EVENTS | DELETE_EVENTS:
        return None, f"skipped: unsupported type {event.type}"
    try:
        contact = GhlContact.model_validate(event.contact_payload)
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
    local = store.contacts_by_ghl_ids(location_id, [contact.id]).get(contact.id)
    return (local["id"] if local else None), _OUTCOMES.get(applied.outcomes[0], applied.outcomes[0])
