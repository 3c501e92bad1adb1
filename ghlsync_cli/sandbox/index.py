"""The contacts of one location, indexed the way search and duplicate checks need them.

Search pages through up to 100,000 contacts by ``(dateUpdated, id)`` or ``(dateAdded, id)`` with
a ``searchAfter`` cursor, so both orders are kept as sorted lists maintained with ``bisect``: a
date-range page is then O(log n + pageLimit). Name and email orders are rarer and are sorted on
demand, cached until the next change. Email and phone maps make GHL's duplicate rule O(1).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from typing import Any

from ghlsync_cli.sandbox.contact import ContactRecord

SortKey = tuple[Any, str]

DATE_SORT_FIELDS = ("dateUpdated", "dateAdded")
STRING_SORT_FIELDS = ("firstNameLowerCase", "lastNameLowerCase", "email")


def _remove_sorted(keys: list[SortKey], key: SortKey) -> None:
    position = bisect.bisect_left(keys, key)
    if position < len(keys) and keys[position] == key:
        del keys[position]


def _map_add(mapping: dict[str, list[str]], key: str | None, contact_id: str) -> None:
    if key:
        mapping.setdefault(key, []).append(contact_id)


def _map_remove(mapping: dict[str, list[str]], key: str | None, contact_id: str) -> None:
    if not key:
        return
    ids = mapping.get(key)
    if ids is None:
        return
    if contact_id in ids:
        ids.remove(contact_id)
    if not ids:
        del mapping[key]


class LocationIndex:
    """Contacts of one GHL location plus its "Allow Duplicate Contact" setting."""

    def __init__(self, location_id: str, *, allow_duplicates: bool = False) -> None:
        self.location_id = location_id
        self.allow_duplicates = allow_duplicates
        self.by_id: dict[str, ContactRecord] = {}
        self.by_updated: list[SortKey] = []
        self.by_added: list[SortKey] = []
        self._by_email: dict[str, list[str]] = {}
        self._by_phone: dict[str, list[str]] = {}
        self._version = 0
        self._string_orders: dict[str, tuple[int, list[SortKey]]] = {}

    def __len__(self) -> int:
        return len(self.by_id)

    def __iter__(self) -> Iterator[ContactRecord]:
        return iter(self.by_id.values())

    def get(self, contact_id: str) -> ContactRecord | None:
        """The current revision of a contact, or None."""
        return self.by_id.get(contact_id)

    def ids_with_email(self, email_key: str) -> list[str]:
        """Ids of contacts whose lowercased email is ``email_key``."""
        return list(self._by_email.get(email_key, ()))

    def ids_with_phone(self, phone: str) -> list[str]:
        """Ids of contacts whose E.164 phone is ``phone``."""
        return list(self._by_phone.get(phone, ()))

    def add(self, record: ContactRecord) -> None:
        """Index a new contact."""
        self.by_id[record.id] = record
        bisect.insort(self.by_updated, (record.updated_ms, record.id))
        bisect.insort(self.by_added, (record.added_ms, record.id))
        _map_add(self._by_email, record.email_key, record.id)
        _map_add(self._by_phone, record.phone, record.id)
        self._version += 1

    def remove(self, record: ContactRecord) -> None:
        """Forget a contact."""
        del self.by_id[record.id]
        _remove_sorted(self.by_updated, (record.updated_ms, record.id))
        _remove_sorted(self.by_added, (record.added_ms, record.id))
        _map_remove(self._by_email, record.email_key, record.id)
        _map_remove(self._by_phone, record.phone, record.id)
        self._version += 1

    def replace(self, old: ContactRecord, new: ContactRecord) -> None:
        """Swap a contact's revision, touching only the index entries that changed."""
        self.by_id[new.id] = new
        if old.updated_ms != new.updated_ms:
            _remove_sorted(self.by_updated, (old.updated_ms, old.id))
            bisect.insort(self.by_updated, (new.updated_ms, new.id))
        if old.added_ms != new.added_ms:
            _remove_sorted(self.by_added, (old.added_ms, old.id))
            bisect.insort(self.by_added, (new.added_ms, new.id))
        if old.email_key != new.email_key:
            _map_remove(self._by_email, old.email_key, old.id)
            _map_add(self._by_email, new.email_key, new.id)
        if old.phone != new.phone:
            _map_remove(self._by_phone, old.phone, old.id)
            _map_add(self._by_phone, new.phone, new.id)
        self._version += 1

    def load(self, records: Iterable[ContactRecord]) -> None:
        """Add many contacts at once, sorting the indexes once instead of per insert."""
        for record in records:
            self.by_id[record.id] = record
            self.by_updated.append((record.updated_ms, record.id))
            self.by_added.append((record.added_ms, record.id))
            _map_add(self._by_email, record.email_key, record.id)
            _map_add(self._by_phone, record.phone, record.id)
        self.by_updated.sort()
        self.by_added.sort()
        self._version += 1

    def clear(self) -> None:
        """Drop every contact (the duplicate setting stays)."""
        self.by_id.clear()
        self.by_updated.clear()
        self.by_added.clear()
        self._by_email.clear()
        self._by_phone.clear()
        self._string_orders.clear()
        self._version += 1

    def sorted_keys(self, field: str) -> list[SortKey]:
        """Ascending ``(sortValue, id)`` keys for a search sort field; do not mutate the list."""
        if field == "dateUpdated":
            return self.by_updated
        if field == "dateAdded":
            return self.by_added
        cached = self._string_orders.get(field)
        if cached is not None and cached[0] == self._version:
            return cached[1]
        keys = sorted((record.sort_value(field), record.id) for record in self.by_id.values())
        self._string_orders[field] = (self._version, keys)
        return keys
