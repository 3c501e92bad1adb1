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
work therefore calls ``collect_batch_garbage`` between batches: then memory stays flat (one
batch's pages at most), and a collection walks only what is alive between batches, which is
little in a pull.
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


def collect_batch_garbage() -> None:
    """Free the reference cycles the last batch left (HTTP responses), while paused."""
    gc.collect()
