"""The read-ahead of pulls: the background thread runs at most ``ahead`` items ahead."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from ghlsync_cli.sync.engine import _pages_ahead
from ghlsync_cli.sync.feed import PageFeed


def counted(items: int, fetched: list[int]) -> Iterator[int]:
    for n in range(items):
        fetched.append(n)
        yield n


def settle(fetched: list[int], expected: int) -> None:
    """Wait (briefly) until the thread fetched ``expected`` items, then a little longer."""
    deadline = time.monotonic() + 5
    while len(fetched) < expected and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)  # time to fetch more, if it wrongly would


@pytest.mark.parametrize("ahead", [1, 3])
def test_the_thread_stays_ahead_items_ahead_of_the_merging(ahead: int) -> None:
    fetched: list[int] = []
    with PageFeed(counted(20, fetched), ahead=ahead) as feed:
        # Queued: ``ahead``; the next one fetched and waiting for room.
        settle(fetched, ahead + 1)
        assert len(fetched) == ahead + 1
        groups = feed.groups(max_items=1)
        assert list(next(groups)) == [0]
        settle(fetched, ahead + 2)
        assert len(fetched) == ahead + 2
        assert [item for group in groups for item in group] == list(range(1, 20))


def test_pulls_keep_about_five_hundred_contacts_ahead_in_whole_pages() -> None:
    assert [_pages_ahead(limit) for limit in (500, 250, 100, 50, 1)] == [1, 2, 5, 10, 500]
    assert _pages_ahead(501) == 1
