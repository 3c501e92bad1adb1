"""Bulk work checkpoints the WAL from a background thread, sets its own connection's automatic
checkpoint as a bound only, reads through a memory map, keeps temporary files in memory, and
always restores all three."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ghlsync_cli.errors import StorageError
from ghlsync_cli.store import (
    BULK_CHECKPOINT_PAGES,
    DEFAULT_CHECKPOINT_PAGES,
    MAPPED_READ_BYTES,
    TEMP_STORE_MEMORY,
    Store,
)
from ghlsync_cli.sync.replay import replay


def checkpoint_pages(store: Store) -> int:
    return int(store.scalar("PRAGMA wal_autocheckpoint"))


@pytest.fixture
def two_connections(tmp_path: Path) -> Iterator[tuple[Store, Store]]:
    """Two connections to one database file (settings are per connection)."""
    store = Store.open(tmp_path / "ghlsync.db")
    other = Store.open(tmp_path / "ghlsync.db")
    try:
        yield store, other
    finally:
        store.close()
        other.close()


def test_bulk_checkpoints_apply_inside_the_block_and_are_restored_after_an_error(
    two_connections: tuple[Store, Store],
) -> None:
    store, other = two_connections
    assert checkpoint_pages(store) == DEFAULT_CHECKPOINT_PAGES
    with pytest.raises(RuntimeError), store.bulk_checkpoints():
        assert checkpoint_pages(store) == BULK_CHECKPOINT_PAGES
        assert checkpoint_pages(other) == DEFAULT_CHECKPOINT_PAGES  # per connection
        raise RuntimeError
    assert checkpoint_pages(store) == DEFAULT_CHECKPOINT_PAGES


def create_filler(store: Store, n_column: str) -> None:
    """A table ``filler`` of 200 rows (``n`` 0-199, declared as ``n_column``), 3,000 bytes each:
    a page per row, so a statement changing many rows changes as many pages."""
    with store.write():
        store.execute(f"CREATE TABLE filler ({n_column}, x BLOB)")
        store.executemany(
            "INSERT INTO filler VALUES (?, randomblob(3000))", [(n,) for n in range(200)]
        )


def mapped_bytes(store: Store) -> int:
    return int(store.scalar("PRAGMA mmap_size"))


def test_mapped_reads_apply_inside_the_block_and_are_restored_after_an_error(
    two_connections: tuple[Store, Store],
) -> None:
    store, other = two_connections
    before = mapped_bytes(store)
    assert before < MAPPED_READ_BYTES
    create_filler(store, "n INTEGER")
    with pytest.raises(RuntimeError), store.mapped_reads():
        assert mapped_bytes(store) == MAPPED_READ_BYTES
        assert mapped_bytes(other) == before  # per connection
        # Reads see what is in the file and what is only in the WAL, written by another
        # connection while this one maps the file.
        with other.write():
            other.execute("UPDATE filler SET n = n + 1000 WHERE n % 2 = 0")
        assert store.scalar("SELECT sum(n >= 1000) FROM filler") == 100
        raise RuntimeError
    assert mapped_bytes(store) == before


def temp_store(store: Store) -> int:
    return int(store.scalar("PRAGMA temp_store"))


def test_temp_in_memory_applies_inside_the_block_and_is_restored_after_an_error(
    two_connections: tuple[Store, Store],
) -> None:
    store, other = two_connections
    before = temp_store(store)
    assert before != TEMP_STORE_MEMORY
    create_filler(store, "n INTEGER UNIQUE")
    with pytest.raises(RuntimeError), store.temp_in_memory():
        assert temp_store(store) == TEMP_STORE_MEMORY
        assert temp_store(other) == before  # per connection
        with store.write():
            # A statement failing on its 151st row, after changing 150 pages (a journal far
            # beyond what SQLite keeps in memory otherwise): undone whole, the transaction kept.
            with pytest.raises(StorageError, match="UNIQUE constraint failed"):
                store.execute("UPDATE filler SET n = CASE WHEN n = 150 THEN 199 ELSE n + 1000 END")
            assert store.scalar("SELECT sum(n) FROM filler") == sum(range(200))
            store.execute("UPDATE filler SET n = n + 1000 WHERE n < 10")
        raise RuntimeError
    assert temp_store(store) == before
    assert other.scalar("SELECT sum(n) FROM filler") == sum(range(200)) + 10 * 1000


def test_a_replay_leaves_the_default_checkpointing_and_reads(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "ghlsync.db")
    try:
        temp_before = temp_store(store)
        body = {"type": "ContactUpdate", "locationId": "nowhere", "id": "c1", "webhookId": "w1"}
        [replayed] = replay(store, [("events.json", json.dumps(body).encode())])
        assert replayed.outcome == "skipped: location nowhere not connected"
        assert checkpoint_pages(store) == DEFAULT_CHECKPOINT_PAGES
        assert mapped_bytes(store) < MAPPED_READ_BYTES
        assert temp_store(store) == temp_before
    finally:
        store.close()


def test_a_background_thread_checkpoints_the_wal_during_bulk_work(tmp_path: Path) -> None:
    path = tmp_path / "ghlsync.db"
    store = Store.open(path)
    try:
        store.execute("CREATE TABLE filler (x BLOB)")
        with store.bulk_checkpoints():
            assert [t.name for t in threading.enumerate()].count("ghlsync-checkpoint") == 1
            before = path.stat().st_size
            for _ in range(20):  # ~2 MiB in 20 commits: far below the connection's own bound
                with store.write():
                    store.executemany("INSERT INTO filler VALUES (randomblob(4000))", [()] * 25)
            deadline = time.monotonic() + 10
            # Only a checkpoint copies pages from the WAL into the database file.
            while path.stat().st_size < before + 1024 * 1024 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert path.stat().st_size >= before + 1024 * 1024
        assert "ghlsync-checkpoint" not in [t.name for t in threading.enumerate()]
        assert checkpoint_pages(store) == DEFAULT_CHECKPOINT_PAGES
        assert store.scalar("SELECT count(*) FROM filler") == 500
    finally:
        store.close()
