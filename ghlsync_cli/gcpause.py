"""Bulk work without the cyclic garbage collector.

Why: a pull, a replay or the sandbox's seeding allocates millions of short-lived objects
(validated contacts, row dicts), and a replay keeps every parsed body alive until it ends. Each
allocation burst that survives a young collection counts towards a full one, and a full
collection walks every live object while holding the GIL, stopping the read-ahead thread and the
merging thread alike: at 100k contacts that was over a second of an initial-sync. Almost none of
these objects form reference cycles, so the collector is paused for the duration and resumed
afterwards.

The exception is each HTTP exchange: httpx links a response and its stream both ways, so every
page's response (with its body, hundreds of KiB at pageLimit 500) waits for the collector. Bulk
work therefore collects every so many items (``PeriodicCollection``): then memory stays flat (that
many items' pages at most). Not after every batch: a full collection walks every live object (a
few milliseconds), and a pull at GHL's rate limit merges one small page per batch, so collecting
after each was a fifth of its time.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector inside the block (reference counting still frees)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class PeriodicCollection:
    """Frees the reference cycles bulk work leaves (HTTP responses), while paused, once per
    ``every`` items done, however the items are batched."""

    def __init__(self, every: int) -> None:
        self.every = max(1, every)
        self._pending = 0

    def done(self, items: int) -> None:
        """Count ``items`` more done; collect once ``every`` were done since the last time."""
        self._pending += items
        if self._pending >= self.every:
            self._pending = 0
            gc.collect()
