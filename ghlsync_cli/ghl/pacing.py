"""Client-side pacing, so a sync runs at GHL's rate limit without ever being answered 429.

GHL allows each location a burst of ``X-RateLimit-Max`` requests per
``X-RateLimit-Interval-Milliseconds`` (100 per 10 s today) and ``X-RateLimit-Limit-Daily`` per day
(200,000), and reports what is left in ``X-RateLimit-Remaining`` and ``X-RateLimit-Daily-Remaining``
on every response.

Why a sliding window of *completion* times works: GHL counts a request when it arrives, which is
after we sent it and before its response reaches us. So if, when we are about to send, fewer than
``max`` of our responses arrived within the last ``interval``, then fewer than ``max`` of our
requests can be in GHL's window when the new one arrives, whatever the latencies were. Waiting for
exactly that keeps a sequential client at the advertised limit (the theoretical floor) with no 429s.

Another process may share the location's limit. We cannot see its requests, only
``X-RateLimit-Remaining: 0`` when our own requests do not explain it; then we wait one full
interval after that response, which empties any window GHL keeps.

The pacer assumes one request at a time (``acquire`` → send → ``record``), as ``GHLClient`` does.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping

from ghlsync_cli.errors import UnavailableError

DEFAULT_MAX_REQUESTS = 100
DEFAULT_INTERVAL = 10.0

_MAX = "x-ratelimit-max"
_INTERVAL_MS = "x-ratelimit-interval-milliseconds"
_REMAINING = "x-ratelimit-remaining"
_DAILY_LIMIT = "x-ratelimit-limit-daily"
_DAILY_REMAINING = "x-ratelimit-daily-remaining"


class RatePacer:
    """Keeps requests to ``max_requests`` per ``interval`` and stops at GHL's daily limit."""

    def __init__(
        self,
        *,
        max_requests: int = DEFAULT_MAX_REQUESTS,
        interval: float = DEFAULT_INTERVAL,
        margin: float = 0.01,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.max_requests = max(1, max_requests)
        self.interval = interval
        # A little slack for servers whose window boundary is inclusive or whose clock is coarse.
        self.margin = margin
        self.daily_limit: int | None = None
        self.daily_remaining: int | None = None
        self.waited = 0.0
        self._clock = clock
        self._sleep = sleep
        self._completions: deque[float] = deque()
        self._last_send: float | None = None
        self._blocked_until = float("-inf")

    def delay(self) -> float:
        """Seconds to wait from now before the next request may be sent (0.0 when it may go now)."""
        if self.daily_remaining == 0:
            limit = f" of {self.daily_limit} requests" if self.daily_limit else ""
            raise UnavailableError(
                f"GHL's daily API limit{limit} for this location is used up.",
                hint="The daily limit resets at midnight; rerun after that (cron will).",
            )
        now = self._clock()
        wait = self._blocked_until - now
        if len(self._completions) >= self.max_requests:
            oldest_in_window = self._completions[-self.max_requests]
            wait = max(wait, oldest_in_window + self.interval + self.margin - now)
        return max(0.0, wait)

    def acquire(self) -> float:
        """Wait until a request may be sent, note the send time, and return the seconds waited."""
        wait = self.delay()
        if wait > 0:
            self._sleep(wait)
            self.waited += wait
        self._last_send = self._clock()
        return wait

    def record(self, headers: Mapping[str, str] | None = None) -> None:
        """Note that a response (or a failure after sending) arrived now; learn GHL's limits."""
        now = self._clock()
        self._completions.append(now)
        values = {key.lower(): value for key, value in (headers or {}).items()}
        self._learn_limits(values)
        self._learn_daily(values)
        if _int(values.get(_REMAINING)) == 0 and not self._explains_exhaustion():
            self._blocked_until = max(self._blocked_until, now + self.interval + self.margin)
        self._forget_old()

    def _learn_limits(self, values: Mapping[str, str]) -> None:
        max_requests = _int(values.get(_MAX))
        if max_requests is not None and max_requests > 0:
            self.max_requests = max_requests
        interval_ms = _int(values.get(_INTERVAL_MS))
        if interval_ms is not None and interval_ms > 0:
            self.interval = interval_ms / 1000

    def _learn_daily(self, values: Mapping[str, str]) -> None:
        daily_limit = _int(values.get(_DAILY_LIMIT))
        if daily_limit is not None:
            self.daily_limit = daily_limit
        daily_remaining = _int(values.get(_DAILY_REMAINING))
        if daily_remaining is not None:
            self.daily_remaining = daily_remaining

    def _explains_exhaustion(self) -> bool:
        """True if our own responses since one interval before the last send fill GHL's window."""
        if self._last_send is None:
            return False
        since = self._last_send - self.interval
        ours = sum(1 for completed in self._completions if completed > since)
        return ours >= self.max_requests

    def _forget_old(self) -> None:
        # Nothing older than one interval before the last send can matter again.
        if self._last_send is None:
            return
        horizon = self._last_send - self.interval - self.margin
        while len(self._completions) > self.max_requests and self._completions[0] <= horizon:
            self._completions.popleft()


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(float(value.strip()))
    except (ValueError, OverflowError):
        return None
