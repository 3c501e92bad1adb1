"""Local edits made through ``ghlsync contacts add|update|delete``.

Each edit and its outbox entry are written in one transaction, so a change is never saved without
being queued for GHL (and never queued without being saved). Input is validated before anything is
written: a bad email or phone is a clear error (exit 65) and the database is untouched.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

from ghlsync_cli.errors import ContactNotFoundError, InputError
from ghlsync_cli.mapping import (
    OUTBOUND_FIELDS,
    SYNC_FIELDS,
    is_valid_email,
    is_valid_phone,
    join_name,
    normalize_values,
    split_name,
)
from ghlsync_cli.store import Store
from ghlsync_cli.sync.merge import empty_value
from ghlsync_cli.timeutil import utc_now

# Fields a user may set locally: the outbound ones (dnd and source come from GHL only).
EDITABLE = OUTBOUND_FIELDS


def validate(values: Mapping[str, Any], region: str) -> None:
    """Reject an email or phone GHL would refuse, before anything is written."""
    email = values.get("email")
    if email and not is_valid_email(str(email).strip()):
        raise InputError(
            f"Invalid email address: {email!r}.", hint="Use a full address like name@example.com."
        )
    phone = values.get("phone")
    if phone and not is_valid_phone(str(phone).strip(), region):
        raise InputError(
            f"Invalid phone number: {phone!r} (default region {region}).",
            hint="Use E.164 (+14155550132) or a number valid in --default-region.",
        )


def _with_split_name(values: dict[str, Any]) -> dict[str, Any]:
    name = values.pop("name", None)
    if name is not None and "first_name" not in values and "last_name" not in values:
        values["first_name"], values["last_name"] = split_name(name)
    return values


def add_contact(
    store: Store,
    *,
    location_id: str,
    values: Mapping[str, Any],
    region: str = "US",
    now: Callable[[], str] = utc_now,
) -> dict[str, Any]:
    """Create a local contact and queue it for creation in GHL."""
    given = _with_split_name(dict(values))
    validate(given, region)
    normalized = normalize_values(given, region)
    if not any(normalized.get(f) for f in ("first_name", "last_name", "email", "phone")):
        raise InputError(
            "A contact needs at least a name, an email or a phone.",
            hint="Pass --first-name, --last-name, --email or --phone.",
        )
    stamp = now()
    with store.write():
        sequence = store.next_local_sequence()
        contact_id = hashlib.sha256(f"{location_id}/local/{sequence}".encode()).hexdigest()[:12]
        row = {
            "id": contact_id,
            "location_id": location_id,
            "ghl_id": None,
            **{f: normalized.get(f, empty_value(f)) for f in SYNC_FIELDS},
            "status": "active",
            "raw": {},
            "created_at": stamp,
            "updated_at": stamp,
        }
        row["name"] = join_name(row["first_name"], row["last_name"])
        store.insert_contact(row)
        store.enqueue(contact_id, location_id, reason="local", now=stamp)
    created = store.get_contact(contact_id)
    assert created is not None
    return created


def update_contact(
    store: Store,
    contact_id: str,
    *,
    values: Mapping[str, Any],
    add_tags: list[str] | None = None,
    remove_tags: list[str] | None = None,
    region: str = "US",
    now: Callable[[], str] = utc_now,
) -> dict[str, Any]:
    """Change some fields of a local contact and queue the change for GHL."""
    given = _with_split_name(dict(values))
    validate(given, region)
    normalized = normalize_values(given, region)
    stamp = now()
    with store.write():
        row = store.get_contact(contact_id)
        if row is None:
            raise ContactNotFoundError(contact_id)
        if row["status"] == "deleted":
            raise InputError(
                f"Contact {contact_id} was deleted locally; deleted contacts stay deleted.",
                hint="Add it again with: ghlsync contacts add",
            )
        tags = set(normalized.get("tags", row["tags"]))
        tags |= set(normalize_values({"tags": add_tags or []})["tags"])
        tags -= set(normalize_values({"tags": remove_tags or []})["tags"])
        if add_tags or remove_tags or "tags" in normalized:
            normalized["tags"] = sorted(tags)
        changes = {f: v for f, v in normalized.items() if f in EDITABLE and row.get(f) != v}
        if changes:
            merged = {**row, **changes}
            changes["name"] = join_name(merged["first_name"], merged["last_name"])
            changes["updated_at"] = stamp
            store.update_contact(contact_id, changes)
            store.enqueue(contact_id, row["location_id"], reason="local", now=stamp)
    updated = store.get_contact(contact_id)
    assert updated is not None
    return updated


def delete_contact(
    store: Store, contact_id: str, *, now: Callable[[], str] = utc_now
) -> dict[str, Any]:
    """Tombstone a contact locally: kept with status=deleted, never deleted in GHL."""
    with store.write():
        row = store.get_contact(contact_id)
        if row is None:
            raise ContactNotFoundError(contact_id)
        if row["status"] != "deleted":
            store.update_contact(contact_id, {"status": "deleted", "updated_at": now()})
        store.dequeue(contact_id)
    deleted = store.get_contact(contact_id)
    assert deleted is not None
    return deleted
