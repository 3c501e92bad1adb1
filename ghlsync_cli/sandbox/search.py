"""``POST /contacts/search``: parse the body, then answer a page from a location's indexes.

GHL's search is Elasticsearch underneath: results are sorted by one field with the id as a
tie-breaker, each hit carries its ``searchAfter`` cursor ``[sortValue, id]``, and ``page`` paging
stops at a 10,000-result window. The sandbox keeps those semantics so a client that pages with
``searchAfter`` behaves here as it will against GHL.

When the only filter is a date range on the sort field (the incremental-sync case), a page costs
two bisects and a slice; any other filter falls back to one scan of the location.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from ghlsync_cli.sandbox.clock import ms_from_value
from ghlsync_cli.sandbox.contact import ContactRecord, SortValue
from ghlsync_cli.sandbox.errors import bad_request, unprocessable
from ghlsync_cli.sandbox.fields import normalize_phone
from ghlsync_cli.sandbox.index import (
    DATE_SORT_FIELDS,
    STRING_SORT_FIELDS,
    LocationIndex,
    SortKey,
)

MAX_PAGE_LIMIT = 500
MAX_RESULT_WINDOW = 10_000
DEFAULT_SORT_FIELD = "dateAdded"

_RANGE_OPERATORS = ("gt", "gte", "lt", "lte")
_EQ_FIELDS = ("email", "phone", "id")
_FIRST = itemgetter(0)

Predicate = Callable[[ContactRecord], bool]


@dataclass(frozen=True)
class DateRange:
    """Half-open ``[low, high)`` bounds in epoch ms on ``dateAdded`` or ``dateUpdated``."""

    field: str
    low: int | None = None
    high: int | None = None

    def narrow(self, other: DateRange) -> DateRange:
        """The intersection of two ranges on the same field."""
        lows = [v for v in (self.low, other.low) if v is not None]
        highs = [v for v in (self.high, other.high) if v is not None]
        return DateRange(self.field, max(lows) if lows else None, min(highs) if highs else None)

    def contains(self, stamp_ms: int) -> bool:
        """Whether ``stamp_ms`` is inside the range."""
        if self.low is not None and stamp_ms < self.low:
            return False
        return self.high is None or stamp_ms < self.high


@dataclass(frozen=True)
class SearchQuery:
    """A validated search body."""

    page_limit: int
    page: int = 1
    search_after: tuple[SortValue, str] | None = None
    sort_field: str = DEFAULT_SORT_FIELD
    descending: bool = True
    ranges: dict[str, DateRange] = field(default_factory=dict)
    equals: tuple[tuple[str, str], ...] = ()
    text: str | None = None


@dataclass
class SearchPage:
    """One page of hits (each with its cursor) and the total number of matches."""

    hits: list[tuple[ContactRecord, list[SortValue]]]
    total: int

    def to_json(self) -> bytes:
        """``{"contacts": [...], "total": N}`` built from each revision's cached JSON."""
        contacts = b",".join(record.to_search_json(cursor) for record, cursor in self.hits)
        return b'{"contacts":[' + contacts + b'],"total":' + str(self.total).encode() + b"}"

    def to_dict(self) -> dict[str, Any]:
        """The same response as Python data."""
        contacts = []
        for record, cursor in self.hits:
            item = record.to_dict()
            item["searchAfter"] = list(cursor)
            contacts.append(item)
        return {"contacts": contacts, "total": self.total}


def _int_in_range(body: Mapping[str, Any], key: str, low: int, high: int | None) -> list[str]:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        messages = [f"{key} must be an integer number", f"{key} must not be less than {low}"]
        if high is not None:
            messages.append(f"{key} must not be greater than {high}")
        return messages
    if value < low:
        return [f"{key} must not be less than {low}"]
    if high is not None and value > high:
        return [f"{key} must not be greater than {high}"]
    return []


def _parse_range(index: int, field_name: str, value: Any) -> DateRange:
    if not isinstance(value, dict) or not value or set(value) - set(_RANGE_OPERATORS):
        raise unprocessable(
            f"filters.{index}.value must be an object with gt, gte, lt or lte for a range"
        )
    bounds = DateRange(field_name)
    for operator, raw in value.items():
        try:
            stamp = ms_from_value(raw)
        except ValueError:
            raise unprocessable(f"filters.{index}.value.{operator} must be a date") from None
        if operator == "gt":
            bounds = bounds.narrow(DateRange(field_name, low=stamp + 1))
        elif operator == "gte":
            bounds = bounds.narrow(DateRange(field_name, low=stamp))
        elif operator == "lt":
            bounds = bounds.narrow(DateRange(field_name, high=stamp))
        else:
            bounds = bounds.narrow(DateRange(field_name, high=stamp + 1))
    return bounds


def _parse_filters(raw: Any) -> tuple[dict[str, DateRange], tuple[tuple[str, str], ...]]:
    if raw is None:
        return {}, ()
    if not isinstance(raw, list):
        raise unprocessable("filters must be an array")
    ranges: dict[str, DateRange] = {}
    equals: list[tuple[str, str]] = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            raise unprocessable(f"filters.{index} must be an object")
        name, operator, value = item.get("field"), item.get("operator"), item.get("value")
        if name in DATE_SORT_FIELDS and operator == "range":
            bounds = _parse_range(index, str(name), value)
            ranges[bounds.field] = ranges[bounds.field].narrow(bounds) if name in ranges else bounds
        elif name in _EQ_FIELDS and operator == "eq":
            if not isinstance(value, str):
                raise unprocessable(f"filters.{index}.value must be a string")
            equals.append((str(name), value))
        else:
            raise unprocessable(
                f"filters.{index}: unsupported filter field {name!r} with operator {operator!r}"
            )
    return ranges, tuple(equals)


def _parse_sort(raw: Any) -> tuple[str, bool]:
    if raw is None or raw == []:
        return DEFAULT_SORT_FIELD, True
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        raise unprocessable("sort must be an array of objects")
    allowed = (*DATE_SORT_FIELDS, *STRING_SORT_FIELDS)
    for index, item in enumerate(raw):
        if item.get("field") not in allowed:
            raise unprocessable(
                f"sort.{index}.field must be one of the following values: {', '.join(allowed)}"
            )
        if item.get("direction", "asc") not in ("asc", "desc"):
            raise unprocessable(
                f"sort.{index}.direction must be one of the following values: asc, desc"
            )
    first = raw[0]
    return str(first["field"]), first.get("direction", "asc") == "desc"


def _parse_search_after(raw: Any, sort_field: str) -> tuple[SortValue, str] | None:
    if raw is None:
        return None
    message = "searchAfter must be [sortValue, id] taken from a previous search result"
    if not isinstance(raw, list) or len(raw) != 2 or not isinstance(raw[1], str):
        raise unprocessable(message)
    value = raw[0]
    if sort_field in DATE_SORT_FIELDS:
        if isinstance(value, bool):
            raise unprocessable(message)
        if isinstance(value, int | float):
            return int(value), raw[1]
        if isinstance(value, str) and value.lstrip("-").isdigit():
            return int(value), raw[1]
        raise unprocessable(message)
    if not isinstance(value, str):
        raise unprocessable(message)
    return value, raw[1]


def parse_search(body: Mapping[str, Any]) -> SearchQuery:
    """Validate a search body (without ``locationId``); raises ``SandboxApiError``."""
    errors = _int_in_range(body, "pageLimit", 1, MAX_PAGE_LIMIT)
    if "page" in body:
        errors += _int_in_range(body, "page", 1, None)
    if body.get("query") is not None and not isinstance(body.get("query"), str):
        errors.append("query must be a string")
    if errors:
        raise unprocessable(*errors)
    page_limit = int(body["pageLimit"])
    page = int(body.get("page", 1))
    sort_field, descending = _parse_sort(body.get("sort"))
    search_after = _parse_search_after(body.get("searchAfter"), sort_field)
    if search_after is None and page * page_limit > MAX_RESULT_WINDOW:
        raise bad_request(
            f"page * pageLimit must not be greater than {MAX_RESULT_WINDOW}; "
            "use searchAfter to page deeper"
        )
    ranges, equals = _parse_filters(body.get("filters"))
    text = str(body["query"]).strip().lower() if body.get("query") else None
    return SearchQuery(
        page_limit=page_limit,
        page=page,
        search_after=search_after,
        sort_field=sort_field,
        descending=descending,
        ranges=ranges,
        equals=equals,
        text=text or None,
    )


def _equals_predicate(name: str, value: str) -> Predicate:
    if name == "email":
        wanted = value.strip().lower()
        return lambda record: record.email_key == wanted
    if name == "phone":
        try:
            phone = normalize_phone(value)
        except ValueError:
            phone = value
        return lambda record: record.phone == phone
    return lambda record: record.id == value


def _range_predicate(bounds: DateRange) -> Predicate:
    if bounds.field == "dateUpdated":
        return lambda record: bounds.contains(record.updated_ms)
    return lambda record: bounds.contains(record.added_ms)


def _candidates(index: LocationIndex, name: str, value: str) -> list[ContactRecord]:
    if name == "email":
        ids = index.ids_with_email(value.strip().lower())
    elif name == "phone":
        try:
            ids = index.ids_with_phone(normalize_phone(value))
        except ValueError:
            ids = []
    else:
        ids = [value]
    return [record for record in map(index.get, ids) if record is not None]


def _matching_keys(index: LocationIndex, query: SearchQuery) -> tuple[list[SortKey], int, int]:
    """Ascending sort keys of the matches, as a list plus the ``[low, high)`` slice to use."""
    sort_field = query.sort_field
    predicates: list[Predicate] = []
    sort_range = query.ranges.get(sort_field)
    for name, bounds in query.ranges.items():
        if name == sort_field and not query.equals:
            continue
        predicates.append(_range_predicate(bounds))
    predicates.extend(_equals_predicate(name, value) for name, value in query.equals)
    if query.text:
        text = query.text
        predicates.append(lambda record: text in record.search_text)

    if query.equals:
        # An exact match names a handful of contacts: look them up instead of scanning.
        name, value = query.equals[0]
        found = [r for r in _candidates(index, name, value) if all(p(r) for p in predicates)]
        keys = sorted((record.sort_value(sort_field), record.id) for record in found)
        return keys, 0, len(keys)

    keys = index.sorted_keys(sort_field)
    low, high = 0, len(keys)
    if sort_range is not None:
        if sort_range.low is not None:
            low = bisect.bisect_left(keys, sort_range.low, key=_FIRST)
        if sort_range.high is not None:
            high = max(low, bisect.bisect_left(keys, sort_range.high, key=_FIRST))
    if not predicates:
        return keys, low, high
    by_id = index.by_id
    matched = [key for key in keys[low:high] if all(p(by_id[key[1]]) for p in predicates)]
    return matched, 0, len(matched)


def run_search(index: LocationIndex, query: SearchQuery) -> SearchPage:
    """Answer one search page from a location's contacts."""
    keys, low, high = _matching_keys(index, query)
    limit = query.page_limit
    cursor = query.search_after
    if cursor is not None:
        if query.descending:
            end = bisect.bisect_left(keys, cursor, low, high)
            window = keys[max(low, end - limit) : end][::-1]
        else:
            start = bisect.bisect_right(keys, cursor, low, high)
            window = keys[start : min(high, start + limit)]
    else:
        offset = (query.page - 1) * limit
        if query.descending:
            end = max(low, high - offset)
            window = keys[max(low, end - limit) : end][::-1]
        else:
            start = min(high, low + offset)
            window = keys[start : min(high, start + limit)]
    by_id = index.by_id
    hits = [(by_id[contact_id], [value, contact_id]) for value, contact_id in window]
    return SearchPage(hits=hits, total=high - low)
