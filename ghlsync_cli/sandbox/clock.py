"""Millisecond timestamps for the sandbox, strictly increasing like GHL's ``dateUpdated``.

A sync that pages by ``dateUpdated`` needs every change to land *after* the cursor it already
holds. Real GHL can stamp two writes in the same millisecond; the sandbox bumps ties by 1 ms so
that tests get an exact, repeatable order and can still drive time with an injected clock.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

Clock = Callable[[], float]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)

_ISO_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})"
    r"(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?)?"
    r"(Z|[+-]\d{2}:?\d{2})?$"
)


class MonotonicClock:
    """Hands out epoch-millisecond stamps, each strictly greater than the one before."""

    def __init__(self, clock: Clock = time.time) -> None:
        self._clock = clock
        self._last_ms = 0
        self._lock = threading.Lock()

    def now_ms(self) -> int:
        """The injected clock's current time in epoch milliseconds (no bump, no record)."""
        return int(self._clock() * 1000)

    def tick(self) -> int:
        """A new stamp: the current time, or the previous stamp plus 1 ms on a tie."""
        with self._lock:
            stamp = max(self.now_ms(), self._last_ms + 1)
            self._last_ms = stamp
            return stamp

    def observe(self, stamp_ms: int) -> None:
        """Make every later tick greater than ``stamp_ms`` (used after seeding past data)."""
        with self._lock:
            self._last_ms = max(self._last_ms, stamp_ms)


def iso_from_ms(stamp_ms: int) -> str:
    """Format epoch milliseconds as GHL does: ``2021-07-02T05:18:26.704Z``."""
    seconds, millis = divmod(stamp_ms, 1000)
    t = time.gmtime(seconds)
    return (
        f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T"
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{millis:03d}Z"
    )


def ms_from_value(value: object) -> int:
    """Read a date given as epoch milliseconds (number or digits) or an ISO 8601 string.

    Raises ``ValueError`` when the value is neither.
    """
    if isinstance(value, bool):
        raise ValueError("a boolean is not a date")
    if isinstance(value, int | float):
        return int(value)
    if not isinstance(value, str):
        raise ValueError("a date must be a string or a number")
    text = value.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    match = _ISO_RE.match(text)
    if match is None:
        raise ValueError(f"not an ISO 8601 date: {value!r}")
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    micros = int((fraction or "0")[:6].ljust(6, "0"))
    moment = datetime(
        int(year),
        int(month),
        int(day),
        int(hour or 0),
        int(minute or 0),
        int(second or 0),
        micros,
        tzinfo=UTC,
    )
    offset_s = 0
    if zone and zone != "Z":
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        offset_s = sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    return (moment - _EPOCH) // _ONE_MS - offset_s * 1000
