"""Bulk work pauses the cyclic collector and frees the cycles it leaves once per so many items."""

from __future__ import annotations

import gc
import weakref

from ghlsync_cli.gcpause import PeriodicCollection, gc_paused


class Node:
    other: Node


def cyclic_garbage() -> weakref.ref[Node]:
    """Two objects referring to each other, unreachable: only the cyclic collector frees them."""
    first, second = Node(), Node()
    first.other, second.other = second, first
    return weakref.ref(first)


def test_the_collector_is_paused_inside_and_resumed_after() -> None:
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_cycles_are_freed_once_every_items_were_done_however_they_are_batched() -> None:
    collection = PeriodicCollection(every=3)
    with gc_paused():
        garbage = cyclic_garbage()
        collection.done(1)
        collection.done(1)
        assert garbage() is not None  # two items: not yet
        collection.done(1)
        assert garbage() is None
        garbage = cyclic_garbage()
        collection.done(2)
        assert garbage() is not None  # counted afresh since the last collection
        collection.done(7)  # one big batch: collected once, the count starts over
        assert garbage() is None
        garbage = cyclic_garbage()
        collection.done(2)
        assert garbage() is not None
