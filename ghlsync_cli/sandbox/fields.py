"""Validation and normalisation of contact request bodies, the way GHL applies them.

GHL rewrites what it is sent: phones become E.164, tags are stored lowercased and de-duplicated,
``name`` alone is split at its first space, and ``firstName``/``lastName`` rebuild ``name``. A sync
that pushes a value and reads back a different one has to cope with exactly these rewrites, so the
sandbox reproduces them instead of echoing the input.

A *change set* maps a key to its new value; ``None`` means "clear this key".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import phonenumbers

from ghlsync_cli.sandbox.contact import DERIVED_KEYS
from ghlsync_cli.sandbox.errors import unprocessable

DEFAULT_REGION = "US"

_EMAIL_RE = re.compile(r"^[^\s@]+@[^\s@]+\.[^\s@.]{2,}$")

#: Keys whose value must be a string (or null to clear).
_STRING_KEYS = frozenset(
    {
        "firstName",
        "lastName",
        "name",
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
        "gender",
        "assignedTo",
    }
)

#: Request-only switches that are never stored.
_REQUEST_ONLY_KEYS = frozenset({"createNewIfDuplicateAllowed"})


def normalize_phone(value: str, region: str = DEFAULT_REGION) -> str:
    """E.164 form of a phone number; raises ValueError when it cannot be a full number."""
    try:
        parsed = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(str(exc)) from None
    reason = phonenumbers.is_possible_number_with_reason(parsed)
    if reason != phonenumbers.ValidationResult.IS_POSSIBLE:
        raise ValueError(f"not a possible phone number: {value!r}")
    formatted: str = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    return formatted


def is_email(value: str) -> bool:
    """Whether ``value`` looks like an email address (class-validator's IsEmail, loosely)."""
    return _EMAIL_RE.match(value) is not None


def normalize_tags(values: Iterable[str]) -> list[str]:
    """Tags as GHL stores them: stripped, lowercased, without empties or repeats, order kept."""
    seen: dict[str, None] = {}
    for value in values:
        tag = value.strip().lower()
        if tag:
            seen.setdefault(tag, None)
    return list(seen)


def parse_tag_list(value: Any, key: str = "tags") -> list[str]:
    """Validate a JSON tags array and normalise it; raises a 422 ``SandboxApiError``."""
    if not isinstance(value, list):
        raise unprocessable(f"{key} must be an array")
    if not all(isinstance(item, str) for item in value):
        raise unprocessable(f"each value in {key} must be a string")
    return normalize_tags(value)


def _custom_fields(value: Any, errors: list[str]) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        errors.append("customFields must be an array of objects")
        return None
    items: list[dict[str, Any]] = []
    for item in value:
        entry = dict(item)
        # The write DTOs call the value ``field_value``; GHL returns it as ``value``.
        if "field_value" in entry and "value" not in entry:
            entry["value"] = entry.pop("field_value")
        items.append(entry)
    return items


def parse_changes(body: Mapping[str, Any], *, region: str = DEFAULT_REGION) -> dict[str, Any]:
    """Turn a create/update/upsert body into a validated change set (``None`` = clear).

    Raises a 422 ``SandboxApiError`` listing every invalid key, as class-validator does.
    """
    errors: list[str] = []
    changes: dict[str, Any] = {}
    for key, raw in body.items():
        if (key in DERIVED_KEYS and key != "name") or key in _REQUEST_ONLY_KEYS:
            continue
        value = raw
        if key in _STRING_KEYS:
            if value is not None and not isinstance(value, str):
                errors.append(f"{key} must be a string")
                continue
            value = value.strip() if isinstance(value, str) else None
            value = value or None
            if value is not None and key == "email" and not is_email(value):
                errors.append("email must be an email")
                continue
            if value is not None and key == "phone":
                try:
                    value = normalize_phone(value, region)
                except ValueError:
                    errors.append("phone must be a valid phone number")
                    continue
        elif key == "tags":
            if value is None:
                value = None
            elif not isinstance(value, list) or not all(isinstance(t, str) for t in value):
                errors.append("tags must be an array of strings")
                continue
            else:
                value = normalize_tags(value)
        elif key == "dnd":
            if value is not None and not isinstance(value, bool):
                errors.append("dnd must be a boolean value")
                continue
        elif key == "customFields":
            value = _custom_fields(value, errors)
        elif value == "":
            value = None
        changes[key] = value
    if errors:
        raise unprocessable(*errors)
    return changes


def apply_changes(fields: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """The stored fields after a change set, with GHL's name rules applied.

    ``name`` given without ``firstName``/``lastName`` is split at its first space; otherwise
    ``name`` is ignored because GHL derives it from the two parts. ``customFields`` entries
    replace stored entries with the same ``id`` and keep the others.
    """
    updated = dict(fields)
    pending = dict(changes)
    has_name = "name" in pending
    name = pending.pop("name", None)
    if has_name and "firstName" not in pending and "lastName" not in pending:
        first, _, last = str(name or "").strip().partition(" ")
        pending["firstName"] = first.strip() or None
        pending["lastName"] = last.strip() or None
    for key, value in pending.items():
        if key == "customFields" and value is not None:
            value = _merge_custom_fields(updated.get("customFields") or [], value) or None
        if value is None:
            updated.pop(key, None)
        else:
            updated[key] = value
    return updated


def _merge_custom_fields(
    current: list[dict[str, Any]], incoming: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    merged = {str(item.get("id")): item for item in current}
    for item in incoming:
        merged[str(item.get("id"))] = item
    return [item for item in merged.values() if item.get("value") not in (None, "")]
