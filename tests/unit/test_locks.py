"""The per-location lock: one run per location at a time, and nothing stale after a kill -9."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ghlsync_cli.errors import EX_TEMPFAIL, LockedError
from ghlsync_cli.locks import location_lock, lock_path

LOCATION = "locA"

HOLDER = """
import sys, time
from pathlib import Path
from ghlsync_cli.locks import location_lock
with location_lock(Path(sys.argv[1]), sys.argv[2]):
    print("locked", flush=True)
    time.sleep(60)
"""


@contextmanager
def lock_holder(db: Path, location_id: str) -> Iterator[subprocess.Popen[str]]:
    """A separate process that holds the location's lock until it is killed."""
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(db), location_id],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "locked", proc.stderr
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)


def test_second_acquisition_in_the_same_process_is_refused_at_once(tmp_path: Path) -> None:
    db = tmp_path / "ghlsync.db"
    with location_lock(db, LOCATION):
        started = time.monotonic()
        with pytest.raises(LockedError) as caught, location_lock(db, LOCATION):
            pass
        assert time.monotonic() - started < 0.5
    error = caught.value
    assert error.exit_code == EX_TEMPFAIL == 75
    assert error.location_id == LOCATION
    assert error.lock_path == str(lock_path(db, LOCATION))
    assert f"location {LOCATION}" in error.message
    assert error.hint and "retried later" in error.hint


def test_released_on_exit_even_after_an_error(tmp_path: Path) -> None:
    db = tmp_path / "ghlsync.db"
    with pytest.raises(RuntimeError), location_lock(db, LOCATION):
        raise RuntimeError("boom")
    with location_lock(db, LOCATION):
        pass


def test_locations_and_databases_lock_independently(tmp_path: Path) -> None:
    db = tmp_path / "ghlsync.db"
    other_db = tmp_path / "other" / "ghlsync.db"
    with location_lock(db, LOCATION), location_lock(db, "locB"), location_lock(other_db, LOCATION):
        assert lock_path(db, LOCATION) != lock_path(db, "locB")
        assert lock_path(db, LOCATION) != lock_path(other_db, LOCATION)


def test_lock_file_is_private_and_next_to_the_database(tmp_path: Path) -> None:
    db = tmp_path / "data" / "ghlsync.db"
    with location_lock(db, LOCATION):
        path = lock_path(db, LOCATION)
        assert path.parent == db.parent
        assert path.name.startswith(".ghlsync.db.")
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


def test_a_lock_in_another_process_is_refused_until_that_process_is_killed(
    tmp_path: Path,
) -> None:
    db = tmp_path / "ghlsync.db"
    with lock_holder(db, LOCATION) as holder:
        with pytest.raises(LockedError), location_lock(db, LOCATION):
            pass
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
        assert holder.returncode == -signal.SIGKILL
    # The kernel dropped the dead holder's lock: no stale lock, though the file may remain.
    with location_lock(db, LOCATION):
        pass
