"""Read-ahead for pulls: the next page is fetched while the current one is merged.

Why: fetching (the network, GHL's own time, validating the JSON) and merging (normalising, SQLite)
otherwise take turns, each idle while the other works. A background thread fetches the next page
while the merging thread works on the current one.

Pages are handed out in groups that the engine commits as one transaction each. A group starts
with the next page (waiting for it) and goes on while the following page *has already arrived*,
up to a size limit. So batching adapts by itself: when GHL is slower than merging (the usual
case, paced at its rate limit), every group is one page, committed as soon as it is merged; when
pages arrive faster than they merge, groups grow and commits (each rewriting every index page it
touched) become rarer. The write lock is never held while waiting on the network.

The thread stays at most ``ahead`` pages ahead of the merging (waiting in the queue), plus the one
being fetched, so memory stays flat and requests stay close to the merging; enough ahead that a
merge stalling for a moment (a commit, another process on the core) does not leave a request slot
of GHL's rate limit unused (pulls keep about 500 contacts ahead). Failures keep their order: a
group ends before a failed fetch, so the pages before it commit, and the failure is then raised
in the merging thread, where a plain loop would raise it. A consumer that stops early (Ctrl-C, an
error while merging) does not wait for a request in flight: the thread is a daemon and drops what
it fetches after ``close``.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from types import TracebackType
from typing import Generic, Self, TypeVar

T = TypeVar("T")

_POLL_SECONDS = 0.1


class _End:
    """Marks the end of the items."""


class _Failed:
    """Carries what fetching raised into the merging thread."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _NotReady:
    """The next entry has not arrived yet."""


_NOT_READY = _NotReady()


class PageFeed(Generic[T]):
    """Items of ``source``, fetched up to ``ahead`` ahead by a background thread; use as a
    context manager."""

    def __init__(self, source: Iterator[T], *, ahead: int) -> None:
        self._source = source
        self._queue: queue.Queue[T | _End | _Failed] = queue.Queue(maxsize=max(1, ahead))
        self._next: T | _End | _Failed | _NotReady = _NOT_READY
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._fetch, name="ghlsync-read-ahead", daemon=True)
        self._thread.start()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop fetching; a request already in flight finishes in the background, unused."""
        self._closed.set()
        while True:  # unblock a thread waiting for room in the queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    def groups(self, *, max_items: int) -> Iterator[Iterator[T]]:
        """Groups of at most ``max_items`` items: the next one (waited for), then those ready.

        Raises what fetching raised once the items before it have been handed out.
        """
        while True:
            entry = self._peek(wait=True)
            if isinstance(entry, _End):
                return
            if isinstance(entry, _Failed):
                raise entry.error
            yield self._group(max(1, max_items))

    def _group(self, max_items: int) -> Iterator[T]:
        for count in range(max_items):
            entry = self._peek(wait=count == 0)
            if isinstance(entry, _NotReady | _End | _Failed):
                return
            self._next = _NOT_READY
            yield entry

    def _peek(self, *, wait: bool) -> T | _End | _Failed | _NotReady:
        if isinstance(self._next, _NotReady):
            with contextlib.suppress(queue.Empty):
                self._next = self._queue.get(block=wait)
        return self._next

    def _fetch(self) -> None:
        try:
            for item in self._source:
                if not self._put(item):
                    return
            self._put(_End())
        except BaseException as exc:  # handed to the merging thread, which raises it
            self._put(_Failed(exc))

    def _put(self, entry: T | _End | _Failed) -> bool:
        while not self._closed.is_set():
            try:
                self._queue.put(entry, timeout=_POLL_SECONDS)
            except queue.Full:
                continue
            return True
        return False
