"""Deterministic JSON for the database: the standard library's text, written and read faster.

Promise 3 (the same inputs give the same database, byte for byte) means every JSON text ghlsync
stores must be exactly what ``json.dumps(sort_keys=True, separators=(",", ":"),
ensure_ascii=False)`` writes, and every stored text must read back to the value the standard
library reads. orjson is several times faster and agrees on most values; these functions use it
only where it agrees and fall back to the standard library everywhere else.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

# json.dumps with options builds a new encoder per call; the hot paths call this per row.
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
# Values orjson writes byte for byte as _ENCODER does (see dumps).
_PLAIN_LEAVES = frozenset({str, int, bool, type(None)})
# Every digit as "0", every other byte as a space (see may_hold_long_integer).
_DIGIT_OR_NOT = bytes(48 if 48 <= b <= 57 else 32 for b in range(256))
_LONG_DIGITS = b"0" * 19


def dumps(value: object) -> str:
    """Compact, key-sorted JSON: the same value always gives the same text.

    The text is always the standard library's (``sort_keys``, compact, ``ensure_ascii=False``).
    orjson writes it several times faster and identically for strings, booleans, null, 64-bit
    integers, lists and dicts with string keys (keys sorted by code point, the same escapes), so
    values made only of those go through orjson. Anything else (floats, which orjson formats
    differently, NaN, which it writes as null, huge integers, subclasses, lone surrogates) takes
    the standard library's path, exactly as before.
    """
    try:
        if _is_plain(value):
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except (TypeError, RecursionError):  # beyond 64 bits, a lone surrogate, deep or circular
        pass
    return _ENCODER.encode(value)


def _is_plain(value: object) -> bool:
    """Whether ``value`` is made only of str, int, bool, None, lists, tuples and str-keyed dicts."""
    kind = type(value)
    if kind in _PLAIN_LEAVES:
        return True
    if kind is dict:
        for key, item in value.items():  # type: ignore[attr-defined]
            if type(key) is not str or (type(item) not in _PLAIN_LEAVES and not _is_plain(item)):
                return False
        return True
    if kind is list or kind is tuple:
        return all(map(_is_plain, value))  # type: ignore[call-overload]
    return False


def dumps_normalised(value: object) -> str:
    """``dumps`` for normalised synced values (``mapping.normalize_value``'s results).

    Normalising yields only exact str, bool, None and lists of str, which orjson writes exactly
    as the standard library does, so the check ``dumps`` makes first is skipped. A lone
    surrogate (which orjson refuses) still takes the standard library's path.
    """
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:
        return _ENCODER.encode(value)


def loads(text: str | bytes, *, long_integers: bool | None = None) -> Any:
    """``json.loads`` of ``text`` (bytes: UTF-8 text), faster: orjson reads the text whenever it
    gives exactly the same value.

    orjson refuses NaN, infinities and lone surrogates (the standard library then reads the
    text). It reads every other number as the standard library does (floats correctly rounded,
    like it), except integers beyond 64 bits, which it reads as floats: so a text that may hold
    one (``may_hold_long_integer``) and whose value holds a float is read again by the standard
    library. ``long_integers``: that answer, when the caller has it already (False for a part of
    a larger text found free of them). Errors are ``json.JSONDecodeError`` either way (and
    ``UnicodeDecodeError`` for bytes that are not UTF-8).
    """
    try:
        value = orjson.loads(text)
        if long_integers is None:
            long_integers = may_hold_long_integer(text)
        if not long_integers or not holds_float(value):
            return value
    except (orjson.JSONDecodeError, RecursionError):
        pass
    # (decoded here: json.loads would take bytes in UTF-16 or with a BOM, which text refuses)
    return json.loads(text.decode() if isinstance(text, bytes) else text)


def may_hold_long_integer(text: str | bytes) -> bool:
    """Whether JSON ``text`` may hold an integer beyond 64 bits: 19 digits in a row somewhere
    (every integer of 18 digits fits).

    Turning each byte into a digit or not is one C-level pass, several times faster than walking
    the parsed value for floats.
    """
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    return _LONG_DIGITS in data.translate(_DIGIT_OR_NOT)


def holds_float(value: object) -> bool:
    """Whether decoded JSON holds a float anywhere (one loop over a stack: no call per item)."""
    if type(value) is not dict and type(value) is not list:
        return type(value) is float
    stack: list[Any] = [value]
    while stack:
        container = stack.pop()
        for item in container.values() if type(container) is dict else container:
            kind = type(item)
            if kind is float:
                return True
            if kind is dict or kind is list:
                stack.append(item)
    return False
