"""UTC timestamps in the one text form ghlsync stores and GHL sends: ISO 8601, milliseconds, Z.

Comparing these strings compares the moments, which is what webhook ordering and cursors rely on.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

# The stored form, with a four-digit year (strftime writes years below 1000 unpadded).
_STORED_FORM = re.compile(r"[1-9][0-9]{3}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z")


def utc_now() -> str:
    """The current UTC time in the stored form."""
    return format_time(datetime.now(UTC))


def format_time(moment: datetime) -> str:
    """ISO 8601 UTC with milliseconds and Z (naive datetimes are taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_time(text: str | int | float | None) -> datetime | None:
    """Parse GHL's ISO strings (with Z or an offset) or epoch milliseconds; None if unparsable.

    Hostile input (NaN, 1e20 ms, year 1 with an offset) is "unparsable", never an exception.
    """
    if text is None or text == "" or isinstance(text, bool):
        return None
    try:
        if isinstance(text, int | float):
            moment = datetime.fromtimestamp(text / 1000, UTC)
        else:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
        # Proves the moment is representable in UTC (format_time relies on it).
        return moment.astimezone(UTC)
    except (ValueError, OverflowError, OSError):
        return None


def normalize_time(text: str | int | float | None) -> str | None:
    """A GHL timestamp in the stored form, or None when it cannot be read."""
    if isinstance(text, str) and _STORED_FORM.fullmatch(text):
        # Already in the stored form (as GHL sends them): it only has to be a real moment.
        try:
            datetime.fromisoformat(text[:-1])
        except ValueError:
            return None
        return text
    moment = parse_time(text)
    return format_time(moment) if moment else None


def shift(text: str, *, seconds: float) -> str:
    """A stored timestamp moved by ``seconds`` (negative for earlier)."""
    moment = parse_time(text)
    if moment is None:
        raise ValueError(f"not a timestamp: {text!r}")
    return format_time(moment + timedelta(seconds=seconds))
