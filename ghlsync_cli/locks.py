"""A per-location lock so two timer runs never work on one location at once.

filelock uses ``fcntl.flock`` on POSIX: the kernel drops the lock when its holder dies, so a
``kill -9`` leaves no stale lock behind (the lock file itself may stay; it holds nothing).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import filelock

from ghlsync_cli.errors import ConfigError, LockedError, TryAgainError


def lock_path(db_path: Path, location_id: str) -> Path:
    """The lock file of one location of one database, next to the database."""
    digest = hashlib.sha256(location_id.encode()).hexdigest()[:16]
    return db_path.with_name(f".{db_path.name}.{digest}.lock")


@contextmanager
def location_lock(db_path: Path, location_id: str) -> Iterator[None]:
    """Hold the location's lock, or raise LockedError (exit 75) at once if another run has it."""
    path = lock_path(db_path.expanduser(), location_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(path), timeout=0, mode=0o600, thread_local=False)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise LockedError(location_id, lock_path=str(path)) from None
    try:
        yield
    finally:
        lock.release()


@contextmanager
def waiting_lock(path: Path, *, timeout: float, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path``, waiting up to ``timeout`` s for another process.

    For short critical sections that must not run twice at once (rotating a single-use refresh
    token, rewriting the secrets file); ``what`` names the work in the TryAgainError (exit 75).
    """
    path = path.expanduser()
    lock = filelock.FileLock(str(path), timeout=timeout, mode=0o600, thread_local=False)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except filelock.Timeout:
        raise TryAgainError(
            f"Another ghlsync process kept {what} locked for {timeout:g} s.",
            hint=f"Rerun later; if it persists, check for a stuck ghlsync process ({path}).",
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"Cannot create the lock file {path}: {exc.strerror}.",
            hint="ghlsync needs to write beside the database and the secrets file.",
        ) from None
    try:
        yield
    finally:
        lock.release()
