"""The sandbox's in-memory GHL: locations, their contacts, tokens, and every switch tests turn.

``Sandbox`` is the single source of truth behind the HTTP app and is also driven directly from
Python (seeding, "someone edited this contact in the GHL UI", fault rules). One re-entrant lock
serialises every read and write, so the HTTP thread and a test thread can use it at once, and
webhook events are queued under that lock, in the order the changes happened.

Terminology:
    location     a GHL sub-account; owns contacts, a duplicate setting and one or more tokens
    contact      an immutable ``ContactRecord``; each change stores a new revision
    change set   a validated request body, ``None`` meaning "clear" (see ``fields``)
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Mapping
from typing import Any

from ghlsync_cli.gcpause import gc_paused
from ghlsync_cli.sandbox.clock import Clock, MonotonicClock
from ghlsync_cli.sandbox.contact import ContactRecord
from ghlsync_cli.sandbox.errors import bad_request, contact_not_found, forbidden
from ghlsync_cli.sandbox.faults import FaultInjector
from ghlsync_cli.sandbox.fields import apply_changes, normalize_tags, parse_changes, parse_tag_list
from ghlsync_cli.sandbox.index import LocationIndex
from ghlsync_cli.sandbox.ratelimit import RateLimiter, RateLimitSettings
from ghlsync_cli.sandbox.search import SearchPage, parse_search, run_search
from ghlsync_cli.sandbox.seed import generate_contacts, new_contact_id
from ghlsync_cli.sandbox.stats import Stats
from ghlsync_cli.sandbox.webhooks import (
    CONTACT_CREATE,
    CONTACT_DELETE,
    CONTACT_TAG_UPDATE,
    CONTACT_UPDATE,
    WebhookDispatcher,
    WebhookSettings,
    build_event,
    classify_update,
)

DEFAULT_LOCATION_ID = "sandboxLocation00001"
DEFAULT_TOKEN = "sandbox-token"
DUPLICATE_MESSAGE = "This location does not allow duplicated contacts."

#: What GHL fills in on a new contact when the request does not say otherwise.
_NEW_CONTACT_DEFAULTS: Mapping[str, Any] = {"type": "lead"}


class Sandbox:
    """An in-memory GHL location store with GHL's contact rules; thread-safe."""

    def __init__(
        self,
        *,
        clock: Clock = time.time,
        monotonic: Clock = time.monotonic,
        location_id: str = DEFAULT_LOCATION_ID,
        token: str = DEFAULT_TOKEN,
        allow_duplicates: bool = False,
        rate_limit: RateLimitSettings | None = None,
        webhook_url: str | None = None,
        fault_seed: int = 0,
    ) -> None:
        self._lock = threading.RLock()
        self.clock = MonotonicClock(clock)
        self.default_location_id = location_id
        self.rate_limiter = RateLimiter(rate_limit, monotonic=monotonic, clock=clock)
        self.faults = FaultInjector(fault_seed)
        self.stats = Stats()
        self.webhooks = WebhookDispatcher(WebhookSettings(url=webhook_url))
        self._locations: dict[str, LocationIndex] = {}
        self._tokens: dict[str, str] = {}
        self._owner: dict[str, str] = {}
        self._ids = random.Random(f"ids:{location_id}")
        self.add_location(location_id, token, allow_duplicates=allow_duplicates)

    # -- locations and tokens -------------------------------------------------------------

    def add_location(
        self, location_id: str, token: str | None = None, *, allow_duplicates: bool = False
    ) -> None:
        """Create a location (if new) and optionally issue ``token`` for it."""
        with self._lock:
            if location_id not in self._locations:
                self._locations[location_id] = LocationIndex(
                    location_id, allow_duplicates=allow_duplicates
                )
            if token is not None:
                self._tokens[token] = location_id

    def add_token(self, token: str, location_id: str | None = None) -> None:
        """Issue ``token`` for a location (the default one unless given); creates the location."""
        self.add_location(location_id or self.default_location_id, token)

    def revoke_token(self, token: str) -> bool:
        """Make ``token`` invalid; returns whether it existed."""
        with self._lock:
            return self._tokens.pop(token, None) is not None

    def location_for_token(self, token: str) -> str | None:
        """The location a bearer token belongs to, or None for an unknown token."""
        with self._lock:
            return self._tokens.get(token)

    def location_ids(self) -> list[str]:
        """Every location's id."""
        with self._lock:
            return list(self._locations)

    def set_allow_duplicates(self, allowed: bool, *, location_id: str | None = None) -> None:
        """Turn GHL's "Allow Duplicate Contact" setting on or off for a location."""
        with self._lock:
            self._index(location_id).allow_duplicates = allowed

    def allows_duplicates(self, *, location_id: str | None = None) -> bool:
        """Whether a location accepts contacts sharing an email or phone."""
        with self._lock:
            return self._index(location_id).allow_duplicates

    # -- the GHL API operations -----------------------------------------------------------

    def search_contacts(
        self, location_id: str, body: Mapping[str, Any], *, ignore_cursor: bool = False
    ) -> SearchPage:
        """``POST /contacts/search``; ``ignore_cursor`` replays the first page (a stuck cursor)."""
        if ignore_cursor:
            body = {k: v for k, v in body.items() if k not in ("searchAfter", "page")}
        query = parse_search(body)
        with self._lock:
            return run_search(self._index(location_id), query)

    def get_contact(self, location_id: str, contact_id: str) -> dict[str, Any]:
        """``GET /contacts/{id}``."""
        with self._lock:
            return self._find(location_id, contact_id).to_dict()

    def create_contact(self, location_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /contacts/``: create, refusing duplicates unless the location allows them."""
        changes = parse_changes(body)
        with self._lock:
            return self._create(self._index(location_id), changes).to_dict()

    def upsert_contact(
        self, location_id: str, body: Mapping[str, Any]
    ) -> tuple[bool, dict[str, Any]]:
        """``POST /contacts/upsert``: update the contact matching email, then phone, else create.

        Returns ``(is_new, contact)``.
        """
        changes = parse_changes(body)
        with self._lock:
            index = self._index(location_id)
            force_new = body.get("createNewIfDuplicateAllowed") is True and index.allow_duplicates
            match, field = (None, None) if force_new else self._match(index, changes)
            if match is None:
                return True, self._create(index, changes).to_dict()
            if field == "email" and changes.get("phone"):
                # GHL updates the contact matched first and ignores the second field rather
                # than create a duplicate of another contact's phone.
                owners = set(index.ids_with_phone(changes["phone"])) - {match.id}
                if owners and not index.allow_duplicates:
                    changes.pop("phone")
            return False, self._update(index, match, changes, CONTACT_UPDATE).to_dict()

    def update_contact(
        self, location_id: str, contact_id: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        """``PUT /contacts/{id}``: change the keys present; null or "" clears, tags overwrite."""
        changes = parse_changes(body)
        with self._lock:
            record = self._find(location_id, contact_id)
            index = self._index(location_id)
            return self._update(index, record, changes, CONTACT_UPDATE).to_dict()

    def delete_contact(self, location_id: str, contact_id: str) -> None:
        """``DELETE /contacts/{id}`` (a hard delete)."""
        with self._lock:
            record = self._find(location_id, contact_id)
            self._index(location_id).remove(record)
            del self._owner[record.id]
            self._emit(CONTACT_DELETE, record, self.clock.tick())

    def add_tags(self, location_id: str, contact_id: str, tags: Any) -> list[str]:
        """``POST /contacts/{id}/tags``: add tags; returns every tag of the contact."""
        wanted = parse_tag_list(tags)
        with self._lock:
            record = self._find(location_id, contact_id)
            merged = normalize_tags([*record.tags, *wanted])
            index = self._index(location_id)
            return self._update(index, record, {"tags": merged}, CONTACT_TAG_UPDATE).tags

    def remove_tags(self, location_id: str, contact_id: str, tags: Any) -> list[str]:
        """``DELETE /contacts/{id}/tags``: remove tags; returns the tags left."""
        unwanted = set(parse_tag_list(tags))
        with self._lock:
            record = self._find(location_id, contact_id)
            kept = [tag for tag in record.tags if tag not in unwanted]
            index = self._index(location_id)
            return self._update(index, record, {"tags": kept}, CONTACT_TAG_UPDATE).tags

    # -- admin: what a person or a test does outside the API ------------------------------

    def seed(
        self,
        count: int,
        seed: int = 0,
        *,
        location_id: str | None = None,
        replace: bool = True,
    ) -> int:
        """Fill a location with ``count`` generated contacts (no webhooks); returns its size.

        ``replace`` drops the location's contacts first. Raises ValueError when a generated id
        is already taken (seeding the same seed twice without ``replace``).
        """
        location = location_id or self.default_location_id
        with gc_paused():
            records = generate_contacts(count, seed, location_id=location)
            return self._load(location, records, replace=replace)

    def ui_create_contact(
        self, body: Mapping[str, Any], *, location_id: str | None = None
    ) -> dict[str, Any]:
        """Create a contact as if typed into the GHL UI (same rules, no token, no limits)."""
        return self.create_contact(location_id or self.default_location_id, body)

    def ui_update_contact(
        self, contact_id: str, body: Mapping[str, Any], *, location_id: str | None = None
    ) -> dict[str, Any]:
        """Edit a contact as if in the GHL UI (partial, like ``PUT``)."""
        return self.update_contact(location_id or self.default_location_id, contact_id, body)

    def ui_delete_contact(self, contact_id: str, *, location_id: str | None = None) -> None:
        """Delete a contact as if in the GHL UI."""
        self.delete_contact(location_id or self.default_location_id, contact_id)

    def find_contact(
        self, contact_id: str, *, location_id: str | None = None
    ) -> dict[str, Any] | None:
        """A contact of a location as GHL returns it, or None."""
        with self._lock:
            record = self._index(location_id).get(contact_id)
            return record.to_dict() if record is not None else None

    def list_contacts(self, *, location_id: str | None = None) -> list[dict[str, Any]]:
        """Every contact of a location, oldest ``dateAdded`` first."""
        with self._lock:
            index = self._index(location_id)
            records = [index.by_id[contact_id] for _, contact_id in index.by_added]
        return [record.to_dict() for record in records]

    def contacts_json(self, *, location_id: str | None = None) -> bytes:
        """``{"contacts": [...], "total": n}`` for a location, from cached serialisations."""
        with self._lock:
            index = self._index(location_id)
            records = [index.by_id[contact_id] for _, contact_id in index.by_added]
        items = b",".join(record.to_json() for record in records)
        return b'{"contacts":[' + items + b'],"total":' + str(len(records)).encode() + b"}"

    def count_contacts(self, *, location_id: str | None = None) -> int:
        """How many contacts a location has."""
        with self._lock:
            return len(self._index(location_id))

    def reset(self) -> None:
        """Forget all contacts, fault rules, counters and rate-limit usage (settings stay).

        Webhooks still queued are delivered (or given up) first, so none lands in a later test.

        New contact ids start over too, so a reset sandbox behaves like a fresh one.
        """
        with self._lock:
            for index in self._locations.values():
                index.clear()
            self._owner.clear()
            self._ids = random.Random(f"ids:{self.default_location_id}")
        self.faults.clear()
        self.stats.reset()
        self.rate_limiter.reset()
        self.webhooks.reset_counters()

    def wait_for_webhooks(self, timeout: float = 5.0) -> bool:
        """Block until queued webhook events are delivered (or gave up); False on timeout."""
        return self.webhooks.wait_idle(timeout)

    def close(self) -> None:
        """Finish webhook deliveries and stop the delivery thread."""
        self.webhooks.close()

    # -- internals ------------------------------------------------------------------------

    def _index(self, location_id: str | None) -> LocationIndex:
        location = location_id or self.default_location_id
        index = self._locations.get(location)
        if index is None:
            raise KeyError(f"unknown location {location!r}")
        return index

    def _find(self, location_id: str, contact_id: str) -> ContactRecord:
        record = self._index(location_id).get(contact_id)
        if record is not None:
            return record
        if contact_id in self._owner:
            raise forbidden()
        raise contact_not_found()

    def _load(self, location: str, records: list[ContactRecord], *, replace: bool) -> int:
        with self._lock:
            index = self._index(location)
            owner = self._owner
            for record in records:
                taken_by = owner.get(record.id)
                if taken_by is not None and not (replace and taken_by == location):
                    raise ValueError(
                        f"contact id {record.id} already exists in {taken_by}; "
                        "seed with another seed or replace=True"
                    )
            if replace:
                for record in index:
                    del owner[record.id]
                index.clear()
            index.load(records)
            for record in records:
                self._owner[record.id] = location
            if records:
                self.clock.observe(max(record.updated_ms for record in records))
            return len(index)

    def _new_id(self) -> str:
        contact_id = new_contact_id(self._ids)
        while contact_id in self._owner:
            contact_id = new_contact_id(self._ids)
        return contact_id

    def _match(
        self, index: LocationIndex, changes: Mapping[str, Any]
    ) -> tuple[ContactRecord | None, str | None]:
        email = changes.get("email")
        if email:
            ids = index.ids_with_email(email.lower())
            if ids:
                return index.by_id[ids[0]], "email"
        phone = changes.get("phone")
        if phone:
            ids = index.ids_with_phone(phone)
            if ids:
                return index.by_id[ids[0]], "phone"
        return None, None

    def _check_duplicates(
        self, index: LocationIndex, changes: Mapping[str, Any], current: ContactRecord | None
    ) -> None:
        if index.allow_duplicates:
            return
        email = changes.get("email")
        if email and (current is None or current.email_key != email.lower()):
            self._refuse_duplicate(index, index.ids_with_email(email.lower()), current, "email")
        phone = changes.get("phone")
        if phone and (current is None or current.phone != phone):
            self._refuse_duplicate(index, index.ids_with_phone(phone), current, "phone")

    @staticmethod
    def _refuse_duplicate(
        index: LocationIndex, ids: list[str], current: ContactRecord | None, field: str
    ) -> None:
        for other_id in ids:
            if current is None or other_id != current.id:
                other = index.by_id[other_id]
                raise bad_request(
                    DUPLICATE_MESSAGE,
                    meta={
                        "contactName": other.name or "",
                        "contactId": other.id,
                        "matchingField": field,
                    },
                )

    def _create(self, index: LocationIndex, changes: Mapping[str, Any]) -> ContactRecord:
        self._check_duplicates(index, changes, None)
        stamp = self.clock.tick()
        record = ContactRecord(
            contact_id=self._new_id(),
            location_id=index.location_id,
            added_ms=stamp,
            updated_ms=stamp,
            fields=apply_changes(_NEW_CONTACT_DEFAULTS, changes),
        )
        index.add(record)
        self._owner[record.id] = index.location_id
        self._emit(CONTACT_CREATE, record, stamp)
        return record

    def _update(
        self,
        index: LocationIndex,
        record: ContactRecord,
        changes: Mapping[str, Any],
        default_event: str,
    ) -> ContactRecord:
        self._check_duplicates(index, changes, record)
        stamp = self.clock.tick()
        updated = ContactRecord(
            contact_id=record.id,
            location_id=record.location_id,
            added_ms=record.added_ms,
            updated_ms=stamp,
            fields=apply_changes(record.fields, changes),
        )
        index.replace(record, updated)
        if self.webhooks.settings.is_active:
            event = classify_update(record.to_dict(), updated.to_dict(), default_event)
            self._emit(event, updated, stamp)
        return updated

    def _emit(self, event_type: str, record: ContactRecord, stamp_ms: int) -> None:
        if self.webhooks.settings.is_active:
            body = build_event(event_type, record.location_id, record.to_webhook_dict(), stamp_ms)
            self.webhooks.publish(body)
