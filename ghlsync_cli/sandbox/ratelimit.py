"""GHL's per-location rate limits: a burst window plus a daily quota, with GHL's headers.

GHL allows 100 requests per 10 seconds and 200,000 per day for each app and location, and
reports the state on every response (``X-RateLimit-*``). A client that paces itself by those
headers, and backs off on 429 by ``Retry-After``, can be tested here against the same numbers.
The burst window is sliding: a slot frees exactly ``interval_ms`` after the request that used it.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

DEFAULT_MAX_REQUESTS = 100
DEFAULT_INTERVAL_MS = 10_000
DEFAULT_DAILY_LIMIT = 200_000
_DAY_MS = 86_400_000
UNLIMITED = 1_000_000_000


@dataclass(frozen=True)
class RateLimitSettings:
    """Limits per location; when disabled, nothing is refused and headers say "unlimited"."""

    enabled: bool = True
    max_requests: int = DEFAULT_MAX_REQUESTS
    interval_ms: int = DEFAULT_INTERVAL_MS
    daily: int = DEFAULT_DAILY_LIMIT

    def __post_init__(self) -> None:
        if self.max_requests < 1 or self.interval_ms < 1 or self.daily < 1:
            raise ValueError("max_requests, interval_ms and daily must be at least 1")


@dataclass(frozen=True)
class RateLimitDecision:
    """Whether a request may proceed, and the headers to send either way."""

    allowed: bool
    headers: dict[str, str]
    retry_after_s: int | None = None


@dataclass
class _Usage:
    window: deque[int] = field(default_factory=deque)
    day: int = -1
    day_count: int = 0


class RateLimiter:
    """Sliding-window burst limit and daily quota, kept per location; thread-safe."""

    def __init__(
        self,
        settings: RateLimitSettings | None = None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings or RateLimitSettings()
        self._monotonic = monotonic
        self._clock = clock
        self._usage: dict[str, _Usage] = {}
        self._lock = threading.Lock()

    @property
    def settings(self) -> RateLimitSettings:
        """The limits in force."""
        return self._settings

    def configure(
        self,
        *,
        enabled: bool | None = None,
        max_requests: int | None = None,
        interval_ms: int | None = None,
        daily: int | None = None,
    ) -> RateLimitSettings:
        """Change some limits (None keeps a value) and forget past usage."""
        current = self._settings
        with self._lock:
            self._settings = replace(
                current,
                enabled=current.enabled if enabled is None else enabled,
                max_requests=current.max_requests if max_requests is None else max_requests,
                interval_ms=current.interval_ms if interval_ms is None else interval_ms,
                daily=current.daily if daily is None else daily,
            )
            self._usage.clear()
            return self._settings

    def reset(self) -> None:
        """Forget every location's usage."""
        with self._lock:
            self._usage.clear()

    def check(self, location_id: str) -> RateLimitDecision:
        """Count one request for ``location_id`` if it fits, and say what to answer."""
        settings = self._settings
        now_ms = int(self._monotonic() * 1000)
        today = int(self._clock() * 1000) // _DAY_MS
        with self._lock:
            usage = self._usage.setdefault(location_id, _Usage())
            window = usage.window
            while window and window[0] <= now_ms - settings.interval_ms:
                window.popleft()
            if usage.day != today:
                usage.day, usage.day_count = today, 0
            burst_full = len(window) >= settings.max_requests
            day_full = usage.day_count >= settings.daily
            refused = settings.enabled and (burst_full or day_full)
            retry_after: int | None = None
            if refused:
                if day_full:
                    wait_ms = (today + 1) * _DAY_MS - int(self._clock() * 1000)
                else:
                    wait_ms = window[0] + settings.interval_ms - now_ms
                retry_after = max(1, math.ceil(wait_ms / 1000))
            else:
                window.append(now_ms)
                usage.day_count += 1
            # Disabled limits are advertised as effectively unlimited, so a pacing client runs
            # flat out (benchmarks, fast tests) instead of pacing itself to limits nobody enforces.
            burst = settings.max_requests if settings.enabled else UNLIMITED
            daily = settings.daily if settings.enabled else UNLIMITED
            headers = {
                "X-RateLimit-Limit-Daily": str(daily),
                "X-RateLimit-Daily-Remaining": str(max(0, daily - usage.day_count)),
                "X-RateLimit-Interval-Milliseconds": str(settings.interval_ms),
                "X-RateLimit-Max": str(burst),
                "X-RateLimit-Remaining": str(max(0, burst - len(window))),
            }
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        return RateLimitDecision(allowed=not refused, headers=headers, retry_after_s=retry_after)
