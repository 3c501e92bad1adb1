"""Bulk work checkpoints the WAL less often, on its own connection only, and always restores it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ghlsync_cli.store import BULK_CHECKPOINT_PAGES, DEFAULT_CHECKPOINT_PAGES, Store
from ghlsync_cli.sync.inbox import replay


def checkpoint_pages(store: Store) -> int:
    return int(store.scalar("PRAGMA wal_autocheckpoint"))


def test_bulk_checkpoints_apply_inside_the_block_and_are_restored_after_an_error(
    tmp_path: Path,
) -> None:
    store = Store.open(tmp_path / "ghlsync.db")
    other = Store.open(tmp_path / "ghlsync.db")
    try:
        assert checkpoint_pages(store) == DEFAULT_CHECKPOINT_PAGES
        with pytest.raises(RuntimeError), store.bulk_checkpoints():
            assert checkpoint_pages(store) == BULK_CHECKPOINT_PAGES
            assert checkpoint_pages(other) == DEFAULT_CHECKPOINT_PAGES  # per connection
            raise RuntimeError
        assert checkpoint_pages(store) == DEFAULT_CHECKPOINT_PAGES
    finally:
        store.close()
        other.close()


def test_a_replay_leaves_the_default_checkpointing(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "ghlsync.db")
    try:
        body = {"type": "ContactUpdate", "locationId": "nowhere", "id": "c1", "webhookId": "w1"}
        [replayed] = replay(store, [("events.json", json.dumps(body).encode())])
        assert replayed.outcome == "skipped: location nowhere not connected"
        assert checkpoint_pages(store) == DEFAULT_CHECKPOINT_PAGES
    finally:
        store.close()
