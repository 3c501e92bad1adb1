"""A replay with the writer thread gives exactly what applying its chunks one by one gives."""

from __future__ import annotations

import gc
import shutil
import sqlite3
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
import pytest

from ghlsync_cli.errors import InputError, StorageError
from ghlsync_cli.ghl.models import GhlContact
from ghlsync_cli.store import TEMP_STORE_MEMORY, Store
from ghlsync_cli.sync import replay as replay_module
from ghlsync_cli.sync.engine import SyncEngine
from ghlsync_cli.sync.inbox import receive
from ghlsync_cli.sync.replay import Replayed, replay
from ghlsync_cli.webhooks import WebhookEvent, parse_event

LOC = "locPipeline0001"
SYNCED = "2025-01-01T00:00:00.000Z"
# Columns that hold the clock's time, which differs between two runs.
CLOCK_COLUMNS = {
    "created_at",
    "updated_at",
    "synced_at",
    "received_at",
    "processed_at",
    "queued_at",
    "detected_at",
}


def ghl_contact(i: int, **changes: Any) -> dict[str, Any]:
    return {
        "id": f"ghl{i:03d}",
        "locationId": LOC,
        "firstName": f"First{i}",
        "lastName": "Last",
        "email": f"person{i}@example.com",
        "phone": f"+1415555{i:04d}",
        "city": "Town",
        "tags": ["lead"],
        "dateUpdated": SYNCED,
        "customFields": [{"id": "score", "value": i + 0.5}],  # floats stay in raw, exactly
        **changes,
    }


def seed(path: Path, contacts: int = 16) -> None:
    """A database with a connected location and ``contacts`` linked contacts, and some rows
    other programs changed (a local edit, a tombstone, values JSON does not carry exactly)."""
    store = Store.open(path)
    try:
        with store.write():
            store.save_location(LOC, token_kind="env", now=SYNCED)
            SyncEngine(store, None, location_id=LOC).apply_remote(
                [GhlContact.model_validate(ghl_contact(i)) for i in range(contacts)],
                complete=True,
                source="initial-sync",
            )
    finally:
        store.close()
    other = sqlite3.connect(path)
    with other:  # another program, through its own connection (triggers queue its edits)
        other.execute("UPDATE contacts SET email = 'mine@example.com' WHERE ghl_id = 'ghl002'")
        other.execute("UPDATE contacts SET city = 'Local City' WHERE ghl_id = 'ghl003'")
        other.execute("DELETE FROM contacts WHERE ghl_id = 'ghl004'")  # a tombstone
        other.execute("UPDATE contacts SET dnd = 0.5 WHERE ghl_id = 'ghl009'")
        other.execute("UPDATE contacts SET company = x'00ff' WHERE ghl_id = 'ghl013'")
    other.close()


def event(n: int, kind: str, i: int, **fields: Any) -> bytes:
    body = {
        "type": kind,
        "locationId": LOC,
        "id": f"ghl{i:03d}",
        **fields,
        "webhookId": f"hook-{n}",
        "timestamp": f"2026-01-01T00:00:{n:02d}.000Z",
    }
    return orjson.dumps(body)


def mixed_events() -> bytes:
    """Chunks of four (see the test): plain update chunks, and chunks the usual way must take."""
    lines = [
        # 1: plain updates (a local edit to keep and push, a conflict, a tombstone)
        event(1, "ContactUpdate", 1, city="Alpha"),
        event(2, "ContactUpdate", 2, city="Beta"),
        event(3, "ContactUpdate", 3, city="Gamma"),
        event(4, "ContactUpdate", 4, city="Delta"),
        # 2: plain updates, one of them repeated from chunk 1 (a duplicate), a stale one
        event(5, "ContactUpdate", 5, firstName="Renamed"),
        event(1, "ContactUpdate", 1, city="Alpha"),
        event(7, "ContactUpdate", 6, tags=["vip"], dateUpdated="2024-06-01T00:00:00.000Z"),
        event(8, "ContactUpdate", 7, dnd=True),
        # 3: shares contact 5 with chunk 2 (read after chunk 2's write), a duplicate within it
        event(9, "ContactUpdate", 5, lastName="Later"),
        event(10, "ContactTagUpdate", 8, tags=["lead", "hot"]),
        event(10, "ContactTagUpdate", 8, tags=["lead", "hot"]),
        event(12, "ContactUpdate", 10, city="Epsilon"),
        # 4: a create and a delete: the usual way
        event(13, "ContactCreate", 99, firstName="New", email="new@example.com"),
        event(14, "ContactUpdate", 11, city="Zeta"),
        event(15, "ContactDelete", 12),
        event(16, "ContactUpdate", 14, city="Eta"),
        # 5: a float and a blob stored by another program: the usual way
        event(17, "ContactUpdate", 9, city="Theta"),
        event(18, "ContactUpdate", 13, city="Iota"),
        event(19, "ContactUpdate", 15, city="Kappa"),
        event(20, "ContactUpdate", 0, city="Lambda"),
        # 6: one contact twice: the usual way
        event(21, "ContactUpdate", 1, city="Mu"),
        event(22, "ContactUpdate", 1, city="Nu"),
        event(23, "ContactUpdate", 2, city="Xi"),
        event(24, "ContactUpdate", 3, email="theirs@example.com"),
        # 7: plain again, after the usual way
        event(25, "ContactUpdate", 2, lastName="Omega"),
        event(26, "ContactUpdate", 10, city="Sigma"),
    ]
    return b"\n".join(lines)


def table(path: Path, name: str) -> list[dict[str, Any]]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        rows = [dict(r) for r in conn.execute(f"SELECT * FROM {name} ORDER BY rowid")]
    finally:
        conn.close()
    return [{k: v for k, v in r.items() if k not in CLOCK_COLUMNS} for r in rows]


def run_replay(path: Path, data: bytes) -> list[Replayed]:
    store = Store.open(path)
    try:
        return replay(store, [("events.jsonl", data)])
    finally:
        store.close()


@pytest.fixture
def paired(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A seeded database, replayed into two bodies a chunk."""
    monkeypatch.setattr(replay_module, "REPLAY_CHUNK", 2)
    db = tmp_path / "replay.db"
    seed(db)
    return db


def city_updates(contacts: Iterable[int]) -> bytes:
    """A ContactUpdate of each of ``contacts`` (a new city each), as JSON lines."""
    return b"\n".join(event(n, "ContactUpdate", n, city=f"City {n}") for n in contacts)


def before_writer_runs(monkeypatch: pytest.MonkeyPatch, hook: Callable[[Store], None]) -> None:
    """Call ``hook`` before each batch of statements the writer thread runs (``Store.run``)."""
    run = Store.run

    def hooked(self: Store, statements: Any) -> None:
        if threading.current_thread() is not threading.main_thread():
            hook(self)
        run(self, statements)

    monkeypatch.setattr(Store, "run", hooked)


@pytest.fixture
def written(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """What each write handed to the writer thread returned (False: stale, applied again)."""
    outcomes: list[bool] = []
    write = replay_module._Pipeline._write

    def recorded(self: Any, plan: Any) -> bool:
        outcomes.append(write(self, plan))
        return outcomes[-1]

    monkeypatch.setattr(replay_module._Pipeline, "_write", recorded)
    return outcomes


def test_the_writer_thread_changes_nothing_but_speed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, written: list[bool]
) -> None:
    monkeypatch.setattr(replay_module, "REPLAY_CHUNK", 4)
    seed(tmp_path / "seed.db")
    shutil.copy(tmp_path / "seed.db", tmp_path / "usual.db")
    shutil.copy(tmp_path / "seed.db", tmp_path / "pipelined.db")
    data = mixed_events()

    pipelined = run_replay(tmp_path / "pipelined.db", data)
    # Plain update chunks (1, 2, 3 and 7) went through the writer thread, the rest not.
    assert written == [True, True, True, True]
    monkeypatch.setattr(
        replay_module._Pipeline, "_plan", lambda self, chunk, location_id, read: None
    )
    usual = run_replay(tmp_path / "usual.db", data)

    assert pipelined == usual
    outcomes = [r.outcome for r in pipelined]
    assert "skipped: deleted locally" in outcomes
    assert "skipped: not newer than what was applied" in outcomes
    assert [r.duplicate for r in pipelined].count(True) == 2
    for name in ("contacts", "sync_state", "outbox", "conflicts", "inbox", "contact_flags"):
        assert table(tmp_path / "pipelined.db", name) == table(tmp_path / "usual.db", name), name
    inbox = table(tmp_path / "pipelined.db", "inbox")
    assert len(inbox) == len(data.splitlines()) - 2 and {r["status"] for r in inbox} == {
        "applied",
        "skipped",
    }
    assert isinstance(inbox[0]["body"], bytes) and inbox[0]["body"] == data.splitlines()[0]
    # The local edit survived the merge and waits to be pushed; the conflict was recorded.
    by_ghl = {r["ghl_id"]: r for r in table(tmp_path / "pipelined.db", "contacts")}
    assert (by_ghl["ghl002"]["email"], by_ghl["ghl002"]["city"]) == ("mine@example.com", "Xi")
    assert by_ghl["ghl002"]["last_name"] == "Omega"
    assert by_ghl["ghl009"]["dnd"] == 0.5  # read exactly: its chunk went the usual way
    queued = {r["contact_id"] for r in table(tmp_path / "pipelined.db", "outbox")}
    assert by_ghl["ghl002"]["id"] in queued
    assert [c["field"] for c in table(tmp_path / "pipelined.db", "conflicts")] == ["city"]


def test_a_commit_by_another_program_between_read_and_write_is_not_lost(
    paired: Path, monkeypatch: pytest.MonkeyPatch, written: list[bool]
) -> None:
    db = paired
    read = replay_module._Pipeline._read
    edits = iter(["first@example.com"])

    def another_program_edits_after_the_read(self: Any, *args: Any) -> Any:
        found = read(self, *args)
        email = next(edits, None)
        if email is not None:  # once: the first chunk's contact, edited and committed
            other = sqlite3.connect(db)
            with other:
                other.execute("UPDATE contacts SET email = ? WHERE ghl_id = 'ghl005'", (email,))
            other.close()
        return found

    monkeypatch.setattr(replay_module._Pipeline, "_read", another_program_edits_after_the_read)
    data = b"\n".join(
        [
            event(1, "ContactUpdate", 5, city="Omicron"),
            event(2, "ContactUpdate", 6, city="Pi"),
            event(3, "ContactUpdate", 7, city="Rho"),
        ]
    )
    results = run_replay(db, data)

    assert [r.outcome for r in results] == ["updated"] * 3
    assert written[0] is False  # stale: rolled back, then applied the usual way
    by_ghl = {r["ghl_id"]: r for r in table(db, "contacts")}
    assert (by_ghl["ghl005"]["email"], by_ghl["ghl005"]["city"]) == (
        "first@example.com",
        "Omicron",
    )
    assert by_ghl["ghl005"]["id"] in {r["contact_id"] for r in table(db, "outbox")}
    assert [r["status"] for r in table(db, "inbox")] == ["applied"] * 3


def test_a_failed_write_on_the_writer_thread_stops_the_replay_with_whole_chunks_kept(
    paired: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = paired
    plain = [5, 6, 7, 8, 10, 11]  # contacts no other program touched
    data = city_updates(plain)
    run = Store.run
    writes: list[int] = []

    def disk_full_on_the_second_write(store: Store) -> None:
        writes.append(1)
        if len(writes) == 2:
            raise StorageError("The disk is full.", path=str(db))

    before_writer_runs(monkeypatch, disk_full_on_the_second_write)
    with pytest.raises(StorageError):
        run_replay(db, data)
    assert len(table(db, "inbox")) == 2  # the first chunk, whole; nothing of the second

    monkeypatch.setattr(Store, "run", run)
    results = run_replay(db, data)
    assert [r.duplicate for r in results] == [True, True, False, False, False, False]
    cities = {r["ghl_id"]: r["city"] for r in table(db, "contacts")}
    assert [cities[f"ghl{n:03d}"] for n in plain] == [f"City {n}" for n in plain]


def test_the_writer_thread_writes_with_its_statement_journals_in_memory(
    paired: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    temp_stores: list[int] = []
    before_writer_runs(
        monkeypatch, lambda store: temp_stores.append(int(store.scalar("PRAGMA temp_store")))
    )
    assert [r.outcome for r in run_replay(paired, city_updates([5, 6, 7, 8]))] == ["updated"] * 4
    assert temp_stores == [TEMP_STORE_MEMORY] * 2


def test_chunks_read_while_parsing_are_read_again_after_a_chunk_applied_the_usual_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, written: list[bool]
) -> None:
    monkeypatch.setattr(replay_module, "REPLAY_CHUNK", 2)
    seed(tmp_path / "seed.db")
    other_location = "locPipeline0002"
    store = Store.open(tmp_path / "seed.db")
    try:
        with store.write():
            store.save_location(other_location, token_kind="env", now=SYNCED)
            SyncEngine(store, None, location_id=other_location).apply_remote(
                [
                    GhlContact.model_validate({**ghl_contact(i), "locationId": other_location})
                    for i in (100, 101)
                ],
                complete=True,
                source="initial-sync",
            )
    finally:
        store.close()
    shutil.copy(tmp_path / "seed.db", tmp_path / "usual.db")
    shutil.copy(tmp_path / "seed.db", tmp_path / "pipelined.db")
    uninstall = orjson.dumps(
        {"type": "UNINSTALL", "locationId": LOC, "webhookId": "hook-3", "appId": "app1"}
    )
    elsewhere = [
        orjson.loads(event(n, "ContactUpdate", i, city="Else")) for n, i in ((5, 100), (6, 101))
    ]
    data = b"\n".join(
        [
            event(1, "ContactUpdate", 5, city="Before"),
            event(2, "ContactUpdate", 6, city="Before"),
            uninstall,  # disconnects the location: the usual way
            event(4, "ContactUpdate", 7, city="Between"),
            # The other location's contacts: through the writer thread.
            *(orjson.dumps({**body, "locationId": other_location}) for body in elsewhere),
            # Contacts no chunk before holds: read while the files were parsed, when the
            # location was still connected.
            event(7, "ContactUpdate", 8, city="After"),
            event(8, "ContactUpdate", 10, city="After"),
        ]
    )
    monkeypatch.setattr(replay_module, "READ_AHEAD_QUEUE", 100)  # every one, however slow
    read_ahead: list[int] = []
    read = replay_module._Pipeline.read_ahead

    def recorded(self: Any, index: int, chunk: Any) -> None:
        read(self, index, chunk)
        read_ahead.extend(i for i in self._ahead if i not in read_ahead)

    monkeypatch.setattr(replay_module._Pipeline, "read_ahead", recorded)
    pipelined = run_replay(tmp_path / "pipelined.db", data)
    assert 3 in read_ahead
    assert written == [True, True]  # the first chunk and the other location's

    monkeypatch.setattr(
        replay_module._Pipeline, "_plan", lambda self, chunk, location_id, read: None
    )
    usual = run_replay(tmp_path / "usual.db", data)
    assert pipelined == usual
    assert [r.outcome for r in pipelined][-2:] == [f"skipped: location {LOC} not connected"] * 2
    for name in ("contacts", "sync_state", "outbox", "inbox"):
        assert table(tmp_path / "pipelined.db", name) == table(tmp_path / "usual.db", name), name


def test_bodies_stored_by_serve_are_applied_before_the_files_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, written: list[bool]
) -> None:
    monkeypatch.setattr(replay_module, "READ_AHEAD_QUEUE", 100)  # every chunk read ahead
    db = tmp_path / "replay.db"
    seed(db)
    store = Store.open(db)
    try:  # as serve stores a body, before a replay starts: not applied yet
        receive(store, parse_event(event(1, "ContactUpdate", 5, city="Pending")))
    finally:
        store.close()
    data = b"\n".join(
        [event(2, "ContactUpdate", 5, firstName="File"), event(3, "ContactUpdate", 6, city="F")]
    )
    results = run_replay(db, data)

    assert [r.outcome for r in results] == ["updated", "updated"]
    assert written == [True]  # the file's chunk went through the writer thread, read ahead
    by_ghl = {r["ghl_id"]: r for r in table(db, "contacts")}
    assert (by_ghl["ghl005"]["city"], by_ghl["ghl005"]["first_name"]) == ("Pending", "File")
    # Its base copy holds both changes: nothing looks like a local edit, nothing is queued.
    state = {r["contact_id"]: r for r in table(db, "sync_state")}[by_ghl["ghl005"]["id"]]
    assert orjson.loads(state["base"])["city"] == "Pending"
    assert by_ghl["ghl005"]["id"] not in {r["contact_id"] for r in table(db, "outbox")}
    assert {r["status"] for r in table(db, "inbox")} == {"applied"}


@pytest.fixture
def writer_jobs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The writer thread's jobs in the order it ran them: "read N" / "write N" (N: the first
    GHL id of the chunk, as a number), with no chunk read while the files are parsed."""
    monkeypatch.setattr(replay_module, "READ_AHEAD_QUEUE", 0)
    jobs: list[str] = []
    read, write = replay_module._Pipeline._read, replay_module._Pipeline._write

    def recorded_read(self: Any, location_id: str, ghl_ids: list[str], keys: list[str]) -> Any:
        jobs.append(f"read {min(int(i[3:]) for i in ghl_ids)}")
        return read(self, location_id, ghl_ids, keys)

    def recorded_write(self: Any, plan: Any) -> bool:
        jobs.append(f"write {min(int(r.ghl_id[3:]) for r in plan.results if r.ghl_id)}")
        return write(self, plan)

    monkeypatch.setattr(replay_module._Pipeline, "_read", recorded_read)
    monkeypatch.setattr(replay_module._Pipeline, "_write", recorded_write)
    return jobs


def test_the_chunk_after_next_is_read_before_this_chunks_write_when_neither_holds_its_contacts(
    paired: Path, writer_jobs: list[str]
) -> None:
    results = run_replay(paired, city_updates([5, 6, 7, 8, 10, 11, 12, 14]))

    assert [r.outcome for r in results] == ["updated"] * 8
    # (chunks 5-6, 7-8, 10-11, 12-14: each read before the write of the chunk two before it)
    assert writer_jobs == [
        *("read 5", "read 7", "read 10", "write 5"),
        *("read 12", "write 7", "write 10", "write 12"),
    ]


def test_the_chunk_after_next_is_read_after_the_write_of_a_chunk_holding_its_contacts(
    paired: Path, writer_jobs: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(paired, tmp_path / "usual.db")
    data = b"\n".join(
        [
            *(event(1, "ContactUpdate", 5, city="First"), event(2, "ContactUpdate", 6, city="A")),
            *(event(3, "ContactUpdate", 7, city="B"), event(4, "ContactUpdate", 8, city="C")),
            # contact 5 again, two chunks later: read only once the first chunk is written
            *(event(5, "ContactUpdate", 5, lastName="Later"), event(6, "ContactUpdate", 10)),
        ]
    )
    pipelined = run_replay(paired, data)

    assert writer_jobs.index("read 5", 1) > writer_jobs.index("write 5")
    by_ghl = {r["ghl_id"]: r for r in table(paired, "contacts")}
    assert (by_ghl["ghl005"]["city"], by_ghl["ghl005"]["last_name"]) == ("First", "Later")
    # Its base copy holds both changes: nothing looks like a local edit.
    state = {r["contact_id"]: r for r in table(paired, "sync_state")}[by_ghl["ghl005"]["id"]]
    assert orjson.loads(state["base"])["city"] == "First"
    monkeypatch.setattr(
        replay_module._Pipeline, "_plan", lambda self, chunk, location_id, read: None
    )
    assert run_replay(tmp_path / "usual.db", data) == pipelined
    for name in ("contacts", "sync_state", "outbox"):
        assert table(paired, name) == table(tmp_path / "usual.db", name), name


@pytest.fixture
def windows(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """For each window a replay applied: its chunks, and the parsed bodies alive as it began."""
    seen: list[tuple[int, int]] = []
    run = replay_module._Pipeline.run

    def recorded(self: Any, chunks: Any) -> list[Replayed]:
        gc.collect()  # (none left over from an earlier test counts)
        alive = sum(isinstance(o, WebhookEvent) for o in gc.get_objects())
        seen.append((len(chunks), alive))
        return run(self, chunks)

    monkeypatch.setattr(replay_module._Pipeline, "run", recorded)
    return seen


@pytest.mark.parametrize(
    ("window_chunks", "chunks", "bodies"),
    [(1, [1] * 7, [4] * 6 + [2]), (3, [3, 3, 1], [12, 12, 2])],
)
def test_a_file_longer_than_a_window_is_applied_as_in_one_window_with_fewer_bodies_parsed_at_once(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    windows: list[tuple[int, int]],
    window_chunks: int,
    chunks: list[int],
    bodies: list[int],
) -> None:
    monkeypatch.setattr(replay_module, "REPLAY_CHUNK", 4)
    seed(tmp_path / "seed.db")
    shutil.copy(tmp_path / "seed.db", tmp_path / "one.db")
    shutil.copy(tmp_path / "seed.db", tmp_path / "windows.db")
    data = mixed_events()  # 26 bodies: 7 chunks; duplicates in chunks 2 and 3
    one_window = run_replay(tmp_path / "one.db", data)
    assert windows == [(7, 26)]
    windows.clear()

    monkeypatch.setattr(replay_module, "REPLAY_WINDOW_CHUNKS", window_chunks)
    in_windows = run_replay(tmp_path / "windows.db", data)

    # Each window began with its own bodies parsed (the first one's from the first pass, each
    # later one's parsed again), and none of the window before it.
    assert windows == list(zip(chunks, bodies, strict=True))
    assert in_windows == one_window
    for name in ("contacts", "sync_state", "outbox", "conflicts", "inbox", "contact_flags"):
        assert table(tmp_path / "windows.db", name) == table(tmp_path / "one.db", name), name


def test_a_bad_body_in_a_later_window_means_none_of_the_file_is_applied(
    paired: Path, monkeypatch: pytest.MonkeyPatch, windows: list[tuple[int, int]]
) -> None:
    monkeypatch.setattr(replay_module, "REPLAY_WINDOW_CHUNKS", 1)
    before = table(paired, "contacts")
    data = city_updates([5, 6, 7, 8, 10]) + b'\n{"id": "ghl007", "city": "No type"}'

    with pytest.raises(InputError, match=r"events\.jsonl#6: Webhook body has no event type"):
        run_replay(paired, data)

    assert windows == []  # nothing was applied: the last body was checked first
    assert table(paired, "inbox") == [] and table(paired, "contacts") == before


def test_the_writer_threads_finished_jobs_are_let_go(
    paired: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read's result holds its chunk's rows: a replay keeps only the jobs not done yet."""
    queued: list[int] = []
    submit = replay_module._Pipeline._submit

    def counted(self: Any, job: Any, *args: Any) -> Any:
        future = submit(self, job, *args)
        queued.append(len(self._queued))
        return future

    monkeypatch.setattr(replay_module._Pipeline, "_submit", counted)
    results = run_replay(paired, city_updates([5, 6, 7, 8, 10, 11, 12, 14, 15, 0]))

    assert [r.outcome for r in results] == ["updated"] * 10
    assert len(queued) >= 10 and max(queued) <= 4  # (10 jobs for 5 chunks, none done kept)


@pytest.mark.parametrize("window_chunks", [1, 100])
def test_progress_counts_the_bodies_checked_then_applied_across_windows(
    paired: Path, monkeypatch: pytest.MonkeyPatch, window_chunks: int
) -> None:
    monkeypatch.setattr(replay_module, "REPLAY_WINDOW_CHUNKS", window_chunks)
    told: list[tuple[str, int, int | None]] = []
    store = Store.open(paired)
    try:
        replay(
            store,
            [("events.jsonl", city_updates([5, 6, 7, 8, 10]))],
            progress=lambda phase, done, total: told.append((phase, done, total)),
        )
    finally:
        store.close()

    assert told == [
        *(("check", 2, None), ("check", 4, None), ("check", 5, 5)),
        *(("apply", 2, 5), ("apply", 4, 5), ("apply", 5, 5)),
    ]
