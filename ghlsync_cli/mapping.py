"""Field mapping between GHL contacts and local rows, and the normalisation both sides share.

Pure functions, no I/O. Normalisation decides what counts as "the same value" everywhere (merge,
matching, echo suppression), so it must be idempotent: ``normalize(normalize(x)) == normalize(x)``.

Terminology:
    values   a dict of local field name → normalised value, for the synced fields only
    present  the GHL keys a payload carried; an absent key is "not sent", an explicit null or ""
             is "cleared"
    raw      GHL keys ghlsync does not map, kept verbatim so nothing GHL sent is dropped
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import phonenumbers

from ghlsync_cli.ghl.models import GhlContact

# Local field → GHL key, for every field that syncs in at least one direction.
GHL_KEY: dict[str, str] = {
    "first_name": "firstName",
    "last_name": "lastName",
    "email": "email",
    "phone": "phone",
    "company": "companyName",
    "address1": "address1",
    "city": "city",
    "state": "state",
    "postal_code": "postalCode",
    "country": "country",
    "tags": "tags",
    "dnd": "dnd",
    "source": "source",
}
SYNC_FIELDS: tuple[str, ...] = tuple(GHL_KEY)
# dnd and source come from GHL only; ghlsync never sends them.
INBOUND_ONLY: frozenset[str] = frozenset({"dnd", "source"})
OUTBOUND_FIELDS: tuple[str, ...] = tuple(f for f in SYNC_FIELDS if f not in INBOUND_ONLY)
SCALAR_OUTBOUND: tuple[str, ...] = tuple(f for f in OUTBOUND_FIELDS if f != "tags")
TEXT_FIELDS: tuple[str, ...] = tuple(f for f in SYNC_FIELDS if f not in ("tags", "dnd"))
# The contact JSON of the public contract, in its order (``contacts show ID --json``).
CONTACT_FIELDS: tuple[str, ...] = (
    "id",
    "ghl_id",
    "location_id",
    "first_name",
    "last_name",
    "name",
    "email",
    "phone",
    "company",
    "address1",
    "city",
    "state",
    "postal_code",
    "country",
    "tags",
    "dnd",
    "source",
    "status",
    "created_at",
    "updated_at",
)
# Keys of a GHL contact that are mapped (or structural) and therefore not kept in raw.
MAPPED_GHL_KEYS: frozenset[str] = frozenset({*GHL_KEY.values(), "id", "locationId", "name"})

_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
# A NANP number already in E.164: +1, then ten digits, the first 2-9. phonenumbers reads it as
# country code 1 with a ten-digit national number (a possible length, no national prefix "1" to
# strip) and writes it back unchanged, whatever the default region. Most GHL locations are in the
# US and Canada, so most phones skip the tens of microseconds a full parse costs.
_NANP_E164 = re.compile(r"\+1[2-9][0-9]{9}", re.ASCII)


def normalize_text(value: object) -> str | None:
    """Strip a text value; empty or missing becomes None (GHL's "" and null both mean cleared)."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def normalize_email(value: object) -> str | None:
    """Strip an email; its case is kept (matching is case-insensitive, storage is not)."""
    return normalize_text(value)


def is_valid_email(value: str) -> bool:
    """A plain shape check: one @, no spaces, a dot in the domain."""
    return bool(_EMAIL_RE.match(value))


def normalize_phone(value: object, region: str = "US") -> str | None:
    """E.164 when phonenumbers finds a possible number, else the stripped text unchanged."""
    text = normalize_text(value)
    if text is None:
        return None
    if _NANP_E164.fullmatch(text):
        return text
    return _phone_form(text, region)


# phonenumbers takes tens of microseconds per number, and a merge normalises the same number on
# both sides (GHL's value and the stored one): remembering recent answers halves that work.
@functools.lru_cache(maxsize=4096)
def _phone_form(text: str, region: str) -> str:
    parsed = _parse_phone(text, region)
    if parsed is None:
        return text
    e164 = _e164(parsed)
    if e164 != text:
        # Some odd inputs ("000000" in DE) give a form that reads back as yet another number:
        # normalising must be idempotent, or every sync would see a change. Keep those as typed.
        again = _parse_phone(e164, region)
        if again is None or _e164(again) != e164:
            return text
    return e164


def _e164(parsed: Any) -> str:
    return str(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))


def is_valid_phone(value: str, region: str = "US") -> bool:
    """True when the number is possible in E.164 terms (length and country code)."""
    return _parse_phone(value, region) is not None


def _parse_phone(text: str, region: str) -> Any:
    try:
        parsed = phonenumbers.parse(text, region.upper())
    except phonenumbers.NumberParseException:
        return None
    return parsed if phonenumbers.is_possible_number(parsed) else None


def normalize_tags(value: object) -> list[str]:
    """Tags as GHL stores them: stripped, lowercase, unique, sorted."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    # (a list first: the Iterable check is an ABC check, slow for the usual case)
    elif type(value) is not list and not isinstance(value, Iterable):
        return []
    tags = {str(t).strip().lower() for t in value if t is not None}
    tags.discard("")
    return sorted(tags)


def normalize_value(field: str, value: object, region: str = "US") -> Any:
    """Normalise one synced field's value."""
    return _NORMALIZERS.get(field, _normalize_text_field)(value, region)


def normalize_values(values: Mapping[str, object], region: str = "US") -> dict[str, Any]:
    """Normalise every synced field present in ``values``; other keys are dropped."""
    normalised: dict[str, Any] = {}
    for field, normalize in _FIELD_NORMALIZERS:
        if field in values:
            value = values[field]
            # A text field holding text, inline (every merge normalises all of both sides').
            if normalize is _normalize_text_field and type(value) is str:
                normalised[field] = value.strip() or None
            else:
                normalised[field] = normalize(value, region)
    return normalised


def _normalize_text_field(value: object, region: str) -> str | None:
    return normalize_text(value)


def _normalize_dnd(value: object, region: str) -> bool:
    return bool(value) if value is not None else False


def _normalize_tags_field(value: object, region: str) -> list[str]:
    return normalize_tags(value)


# Each synced field's normaliser, looked up once instead of tested field by field per value:
# every merge normalises all thirteen fields of both sides.
_NORMALIZERS: dict[str, Callable[[object, str], Any]] = {
    **dict.fromkeys(SYNC_FIELDS, _normalize_text_field),
    "tags": _normalize_tags_field,
    "dnd": _normalize_dnd,
    "phone": normalize_phone,
}
_FIELD_NORMALIZERS: tuple[tuple[str, Callable[[object, str], Any]], ...] = tuple(
    (f, _NORMALIZERS[f]) for f in SYNC_FIELDS
)
# (local field, GHL key, normaliser, whether it is a text field) for every mapped key of a GHL
# contact.
_INBOUND: tuple[tuple[str, str, Callable[[object, str], Any], bool], ...] = tuple(
    (f, GHL_KEY[f], _NORMALIZERS[f], _NORMALIZERS[f] is _normalize_text_field) for f in SYNC_FIELDS
)


def split_name(name: str | None) -> tuple[str | None, str | None]:
    """Split a full name at the first space, as the GHL UI does ("Mary Ann Smith" → "Mary")."""
    text = normalize_text(name)
    if text is None:
        return None, None
    first, _, last = text.partition(" ")
    return normalize_text(first), normalize_text(last)


def join_name(first: str | None, last: str | None) -> str | None:
    """The display name: first and last joined by a space, None when both are empty."""
    return " ".join(p for p in (first, last) if p) or None


def from_ghl(contact: GhlContact, *, complete: bool, region: str = "US") -> dict[str, Any]:
    """Synced local values carried by a GHL contact.

    ``complete`` is for full contact objects (search, get): GHL omits empty keys there, so an absent
    mapped key means empty. For partial payloads (webhooks) an absent key is left out: not sent.
    """
    # Every mapped key is a declared field of GhlContact (never an extra), so the declared
    # fields that were set say what the payload carried, and the model's own dict holds the
    # values (read there rather than through getattr: every pulled contact and webhook).
    present = contact.model_fields_set
    fields = contact.__dict__
    # (normalize_values of the fields read, in one loop)
    values: dict[str, Any] = {}
    for field, key, normalize, text in _INBOUND:
        if key in present:
            value = fields[key]
            if text and type(value) is str:
                values[field] = value.strip() or None
            else:
                values[field] = normalize(value, region)
        elif complete:
            values[field] = normalize(None, region)
    # A payload with only `name` (no first/last) is split the way GHL splits it.
    if "name" in present and "firstName" not in present and "lastName" not in present:
        first, last = split_name(contact.name)
        values["first_name"], values["last_name"] = first, last
    return values


def raw_extras(contact: GhlContact) -> dict[str, Any]:
    """The keys of a GHL contact that ghlsync does not map, verbatim."""
    # (``searchAfter``, a search cursor, is a declared field: never among the extras, never kept)
    kept = dict(contact.model_extra or {})
    present = contact.model_fields_set
    if "dateAdded" in present:
        kept["dateAdded"] = contact.dateAdded
    if "dateUpdated" in present:
        kept["dateUpdated"] = contact.dateUpdated
    return kept


def to_ghl(values: Mapping[str, Any], *, for_create: bool = False) -> dict[str, Any]:
    """GHL request keys for outbound fields; None is sent as null (clears), or omitted on create."""
    body: dict[str, Any] = {}
    for field in OUTBOUND_FIELDS:
        if field not in values:
            continue
        value = values[field]
        if for_create and (value is None or value == []):
            continue
        body[GHL_KEY[field]] = value
    return body


def content_hash(values: Mapping[str, Any]) -> str:
    """A stable hash of synced values, for cheap "did anything change" checks."""
    canonical = {f: values.get(f) for f in SYNC_FIELDS}
    blob = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()
