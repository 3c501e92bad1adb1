"""One stored GHL contact and the JSON GHL returns for it.

A record is immutable: every change makes a new record with a new ``dateUpdated``. That lets the
rendered JSON be cached per revision (a 500-contact search page is then a byte join), lets webhook
events keep the exact "before" snapshot, and keeps the sorted indexes honest.

Rendering follows GHL: ``name`` and the ``*LowerCase`` keys are derived, empty values are left
out, while ``tags``, ``dnd`` and ``customFields`` are always present.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from ghlsync_cli.sandbox.clock import iso_from_ms

#: Keys GHL computes or owns; a request body cannot set them.
DERIVED_KEYS = frozenset(
    {
        "id",
        "locationId",
        "name",
        "firstNameLowerCase",
        "lastNameLowerCase",
        "fullNameLowerCase",
        "emailLowerCase",
        "dateAdded",
        "dateUpdated",
        "searchAfter",
    }
)

#: Stored keys in the order GHL lists them; anything else follows in insertion order.
_ORDERED_KEYS = (
    "email",
    "phone",
    "companyName",
    "address1",
    "city",
    "state",
    "postalCode",
    "country",
    "website",
    "timezone",
    "source",
    "type",
)
_SPECIAL_KEYS = frozenset({"firstName", "lastName", "tags", "dnd", "customFields", *_ORDERED_KEYS})

#: Keys left out of webhook bodies: GHL's documented contact events carry none of them (not even
#: ``dateUpdated``), so a receiver must not rely on them.
WEBHOOK_OMITTED = (
    "firstNameLowerCase",
    "lastNameLowerCase",
    "fullNameLowerCase",
    "emailLowerCase",
    "dateUpdated",
)

SortValue = int | str


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON, the encoding every sandbox response uses."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def full_name(first: str | None, last: str | None) -> str | None:
    """GHL's ``name``: first and last name joined by a space, or None when both are empty."""
    joined = " ".join(part for part in (first, last) if part)
    return joined or None


class ContactRecord:
    """An immutable revision of a contact: identity, timestamps and the stored fields."""

    __slots__ = ("_json", "_search_text", "added_ms", "fields", "id", "location_id", "updated_ms")

    def __init__(
        self,
        *,
        contact_id: str,
        location_id: str,
        added_ms: int,
        updated_ms: int,
        fields: dict[str, Any],
    ) -> None:
        self.id = contact_id
        self.location_id = location_id
        self.added_ms = added_ms
        self.updated_ms = updated_ms
        self.fields = fields
        self._json: bytes | None = None
        self._search_text: str | None = None

    @property
    def email_key(self) -> str | None:
        """The lowercased email GHL matches duplicates on, or None."""
        email = self.fields.get("email")
        return email.lower() if email else None

    @property
    def phone(self) -> str | None:
        """The E.164 phone, or None."""
        phone: str | None = self.fields.get("phone")
        return phone or None

    @property
    def name(self) -> str | None:
        """The derived full name, or None."""
        return full_name(self.fields.get("firstName"), self.fields.get("lastName"))

    @property
    def tags(self) -> list[str]:
        """A copy of the contact's tags."""
        return list(self.fields.get("tags") or ())

    def sort_value(self, field: str) -> SortValue:
        """The value this record sorts by for a search ``sort`` field (missing → ``""``)."""
        if field == "dateUpdated":
            return self.updated_ms
        if field == "dateAdded":
            return self.added_ms
        if field == "firstNameLowerCase":
            return str(self.fields.get("firstName") or "").lower()
        if field == "lastNameLowerCase":
            return str(self.fields.get("lastName") or "").lower()
        if field == "email":
            return self.email_key or ""
        raise KeyError(field)

    @property
    def search_text(self) -> str:
        """Lowercased name, email and phone, for the search ``query`` substring match."""
        if self._search_text is None:
            parts = (self.name, self.fields.get("email"), self.fields.get("phone"))
            self._search_text = "\n".join(str(p) for p in parts if p).lower()
        return self._search_text

    def to_dict(self) -> dict[str, Any]:
        """The contact as GHL returns it (a fresh copy the caller may change)."""
        fields = self.fields
        out: dict[str, Any] = {"id": self.id, "locationId": self.location_id}
        first = fields.get("firstName") or None
        last = fields.get("lastName") or None
        name = full_name(first, last)
        if first:
            out["firstName"] = first
        if last:
            out["lastName"] = last
        if name:
            out["name"] = name
        if first:
            out["firstNameLowerCase"] = first.lower()
        if last:
            out["lastNameLowerCase"] = last.lower()
        if name:
            out["fullNameLowerCase"] = name.lower()
        for key in _ORDERED_KEYS:
            value = fields.get(key)
            if value is not None and value != "":
                out[key] = value
                if key == "email":
                    out["emailLowerCase"] = value.lower()
        out["dnd"] = bool(fields.get("dnd"))
        out["tags"] = list(fields.get("tags") or ())
        out["dateAdded"] = iso_from_ms(self.added_ms)
        out["dateUpdated"] = iso_from_ms(self.updated_ms)
        out["customFields"] = copy.deepcopy(fields.get("customFields") or [])
        for key, value in fields.items():
            if key not in _SPECIAL_KEYS and value is not None and value != "":
                out[key] = copy.deepcopy(value)
        return out

    def to_json(self) -> bytes:
        """``to_dict()`` as compact JSON, computed once per revision."""
        if self._json is None:
            self._json = dumps(self.to_dict())
        return self._json

    def to_search_json(self, search_after: list[SortValue]) -> bytes:
        """The cached JSON with the search cursor ``searchAfter`` appended."""
        return self.to_json()[:-1] + b',"searchAfter":' + dumps(search_after) + b"}"

    def to_webhook_dict(self) -> dict[str, Any]:
        """The contact keys a GHL contact webhook carries."""
        out = self.to_dict()
        for key in WEBHOOK_OMITTED:
            out.pop(key, None)
        return out
