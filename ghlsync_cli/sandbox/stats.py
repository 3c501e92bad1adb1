"""Request counters, so tests and benchmarks can assert how many calls a sync made.

"Incremental sync makes one search call" or "a retry did not re-send the write" are claims about
traffic; counting by route template (``POST /contacts/search``) makes them one assertion.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any


class Stats:
    """Thread-safe counters of API traffic (admin routes are not counted)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: Counter[str] = Counter()
        self._total = 0
        self._rate_limited = 0
        self._faults = 0

    def count_request(self, route: str | None) -> None:
        """Count one API request; ``route`` is its template, or None when no route matched."""
        with self._lock:
            self._total += 1
            if route is not None:
                self._requests[route] += 1

    def count_rate_limited(self) -> None:
        """Count one 429 answer."""
        with self._lock:
            self._rate_limited += 1

    def count_fault(self) -> None:
        """Count one injected fault."""
        with self._lock:
            self._faults += 1

    def requests(self, route: str) -> int:
        """How many requests hit ``route`` (e.g. ``"POST /contacts/search"``)."""
        with self._lock:
            return self._requests[route]

    def snapshot(self) -> dict[str, Any]:
        """``{"requests": {route: n}, "total": n, "rate_limited": n, "faults": n}``."""
        with self._lock:
            return {
                "requests": dict(sorted(self._requests.items())),
                "total": self._total,
                "rate_limited": self._rate_limited,
                "faults": self._faults,
            }

    def reset(self) -> None:
        """Set every counter back to zero."""
        with self._lock:
            self._requests.clear()
            self._total = 0
            self._rate_limited = 0
            self._faults = 0
