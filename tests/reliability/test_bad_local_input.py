"""Bad input on the local side: wrong ids and values, and a database file that cannot be used.

Each case must end in a clear ``Error:``/``Hint:`` and the contract's exit code (65 bad input,
75 try later, 78 fix the file or setting), never a traceback, and must leave the file exactly as
it was (or, for a full disk, keep every committed page and nothing half-written).

Making a file read-only or a disk full takes root's help when the tests run as root (root writes
through file modes): a read-only bind mount, and a small tmpfs for a real ENOSPC. Where that is
not possible the test is skipped with the reason.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import httpx
import pytest

from ghlsync_cli.asgi import ThreadedServer
from ghlsync_cli.sandbox import WEBHOOK_PUBLIC_KEY_PATH, FaultRule, Sandbox, sign_body
from ghlsync_cli.server import ServeConfig, create_app
from ghlsync_cli.webhooks import SignatureVerifier
from tests.helpers import Cli, contact_rows
from tests.reliability.support import assert_converged, files_of, integrity
from tests.webhooks.support import encode, event, rows, wait_for

IS_ROOT = os.geteuid() == 0


def clean_failure(output: str) -> None:
    """An error a person can act on: Error and Hint lines, no traceback, not "a bug"."""
    assert "Error: " in output and "Hint: " in output, output
    assert "Traceback" not in output and "Unexpected error" not in output, output


def synced(cli: Cli, sandbox: Sandbox, count: int = 5) -> list[dict[str, object]]:
    sandbox.seed(count, seed=61)
    cli.connect()
    assert cli("initial-sync").exit_code == 0
    return cli.json("contacts", "list")  # type: ignore[no-any-return]


# ---- wrong ids and values ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ("contacts", "show", "no-such-id"),
        ("contacts", "update", "no-such-id", "--city", "Nowhere"),
        ("contacts", "delete", "no-such-id", "--yes"),
        ("push", "no-such-id"),
    ],
    ids=lambda c: " ".join(c[:2]),
)
def test_an_unknown_contact_id_exits_65_and_changes_nothing(
    cli: Cli, sandbox: Sandbox, command: tuple[str, ...]
) -> None:
    synced(cli, sandbox)
    before = files_of(cli.db)
    sandbox.stats.reset()

    result = cli(*command)

    assert result.exit_code == 65, result.output
    assert "Error: No contact with id 'no-such-id'." in result.stderr
    assert "Hint: List ids with: ghlsync contacts list" in result.stderr
    assert files_of(cli.db) == before
    assert sandbox.stats.snapshot()["total"] == 0


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (("add", "--first-name", "Bad", "--email", "bad@"), "Invalid email address"),
        (("add", "--first-name", "Bad", "--phone", "555-01"), "Invalid phone number"),
        (("update", "{id}", "--email", "two@@example.com"), "Invalid email address"),
        (("update", "{id}", "--city", "Kept", "--phone", "+1 12"), "Invalid phone number"),
    ],
    ids=["add email", "add phone", "update email", "update phone"],
)
def test_an_invalid_email_or_phone_exits_65_and_writes_nothing(
    cli: Cli, sandbox: Sandbox, command: tuple[str, ...], message: str
) -> None:
    contact_id = str(synced(cli, sandbox)[0]["id"])
    before = files_of(cli.db)
    ghl_before = sandbox.list_contacts()

    result = cli("contacts", *(a.format(id=contact_id) for a in command))

    assert result.exit_code == 65, result.output
    assert f"Error: {message}" in result.stderr
    clean_failure(result.stderr)
    # Nothing written: not the valid fields of the same command, not a queue entry, not GHL.
    assert files_of(cli.db) == before
    assert sandbox.list_contacts() == ghl_before


@pytest.mark.parametrize(
    ("column", "typed", "stored"),
    [
        ("phone", "(212) 555-0142", "+12125550142"),
        ("email", "bob@example.com ", "bob@example.com"),
        ("email", "\u00a0Bob@Example.com", "Bob@Example.com"),
    ],
    ids=["phone as typed", "email padded", "email padded with a no-break space"],
)
def test_a_key_another_program_wrote_as_typed_matches_ghl_not_a_second_copy(
    cli: Cli, sandbox: Sandbox, column: str, typed: str, stored: str
) -> None:
    cli.connect()
    assert cli("initial-sync").exit_code == 0
    with closing(sqlite3.connect(cli.db)) as conn, conn:
        conn.execute(
            f"INSERT INTO contacts (location_id, first_name, {column}) VALUES (?, 'Typed', ?)",
            (cli.location_id, typed),
        )
    # Meanwhile the same person is added in GHL, the key stored normalised.
    sandbox.ui_create_contact({"firstName": "Typed", column: stored.lower(), "city": "GHL"})

    result = cli("reconcile", "--json")

    assert result.exit_code == 0, result.output
    [row] = contact_rows(cli.db)
    assert (row[column].lower(), row["ghl_id"]) == (
        stored.lower(),
        sandbox.list_contacts()[0]["id"],
    )
    assert row["city"] == "GHL"
    assert_converged(cli, sandbox, why=f"a typed {column}")


def test_values_another_program_stored_as_bytes_are_read_as_their_text(
    cli: Cli, sandbox: Sandbox
) -> None:
    """A BLOB in a text column (Python's sqlite3 stores bytes so) is the text it holds: shown,
    pushed and kept as that text, never as the repr of the bytes; tags and raw too."""
    [first, *_] = synced(cli, sandbox, count=2)
    with closing(sqlite3.connect(cli.db)) as conn, conn:
        conn.execute(
            "UPDATE contacts SET city = ?, tags = ?, raw = ? WHERE id = ?",
            ("Zürich".encode(), b'["blob-tag"]', b'{"kept": 1}', first["id"]),
        )

    shown = cli.json("contacts", "show", first["id"])
    assert (shown["city"], shown["tags"]) == ("Zürich", ["blob-tag"])
    result = cli("reconcile", "--json")

    assert result.exit_code == 0, result.output
    [ghl] = [c for c in sandbox.list_contacts() if c["id"] == first["ghl_id"]]
    assert (ghl["city"], ghl["tags"]) == ("Zürich", ["blob-tag"])
    # (the row may keep its bytes: they hold the text both sides now agree on)
    with closing(sqlite3.connect(cli.db)) as conn:
        city, raw = conn.execute(
            "SELECT CAST(city AS TEXT), CAST(raw AS TEXT) FROM contacts WHERE id = ?",
            (first["id"],),
        ).fetchone()
    assert city == "Zürich" and json.loads(raw)["kept"] == 1
    pushed = cli.json("push", "--pending")  # nothing left that differs
    assert (pushed["updated"], pushed["queued"]) == (0, 0)


# ---- a database that cannot be used --------------------------------------------------------------


def newer_schema(db: Path) -> None:
    """Make the file look migrated by a later ghlsync."""
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute(
            "INSERT INTO _sqlite_migrations (migration_set, name, applied_at) "
            "VALUES ('ghlsync', 'm999_from_the_future', '2030-01-01 00:00:00')"
        )


@pytest.mark.parametrize(
    "command", [("status",), ("reconcile",), ("contacts", "add", "--first-name", "New")]
)
def test_a_database_from_a_newer_ghlsync_exits_78_and_is_left_alone(
    cli: Cli, sandbox: Sandbox, command: tuple[str, ...]
) -> None:
    synced(cli, sandbox)
    newer_schema(cli.db)
    before = files_of(cli.db)
    sandbox.stats.reset()

    result = cli(*command)

    assert result.exit_code == 78, result.output
    assert "was written by a newer ghlsync (unknown migrations: m999_from_the_future)" in (
        result.stderr
    )
    assert "Hint: Upgrade ghlsync, or point --db at another file." in result.stderr
    assert files_of(cli.db) == before
    assert sandbox.stats.snapshot()["total"] == 0


def damage(db: Path, how: str) -> None:
    """Break the file the way disks, copies and people do."""
    data = db.read_bytes()
    noise = random.Random(how).randbytes
    if how == "random bytes":
        db.write_bytes(noise(len(data)))
    elif how == "a text file":
        db.write_text("name,email\nAnn,ann@example.com\n")
    elif how == "cut in half":
        db.write_bytes(data[: len(data) // 2])
    else:  # "damaged pages": the header is fine, pages further in are garbage
        broken = bytearray(data)
        for offset in range(8192, len(broken), 8192):
            broken[offset : offset + 512] = noise(512)
        db.write_bytes(bytes(broken))


@pytest.mark.parametrize("how", ["random bytes", "a text file", "cut in half", "damaged pages"])
def test_a_corrupt_database_is_a_clear_error_and_is_left_alone(
    cli: Cli, sandbox: Sandbox, how: str
) -> None:
    synced(cli, sandbox, 50)
    damage(cli.db, how)
    before = files_of(cli.db)

    # A real process, as cron runs it: only the error and the hint on stderr.
    timer = cli.run("reconcile")
    listing = cli("contacts", "list", "--json")

    for code, stdout, stderr in (
        (timer.returncode, timer.stdout, timer.stderr),
        (listing.exit_code, listing.stdout, listing.stderr),
    ):
        assert code == 78, stderr
        assert stdout == ""
        clean_failure(stderr)
        assert "is not a usable SQLite database" in stderr
        assert "Hint: Point --db at a ghlsync database." in stderr
    assert files_of(cli.db) == before  # never "repaired" by overwriting


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Make a file or directory read-only, for root too (a read-only bind mount onto itself)."""
    if not IS_ROOT:
        mode = path.stat().st_mode
        path.chmod(mode & ~0o222)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    if shutil.which("mount") is None or not mount("--bind", str(path), str(path)):
        pytest.skip("running as root, which writes through file modes, and cannot mount here")
    try:
        if not mount("-o", "remount,bind,ro", str(path)):
            pytest.skip("running as root, which writes through file modes, and cannot remount")
        yield
    finally:
        subprocess.run(["umount", str(path)], check=True)


def mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True, check=False).returncode == 0


@pytest.mark.parametrize("what", ["the file", "its directory"])
def test_a_read_only_database_is_refused_clearly_and_left_as_it_was(
    cli: Cli, sandbox: Sandbox, tmp_path: Path, what: str
) -> None:
    cli.db = tmp_path / "data" / "ghlsync.db"
    contact_id = str(synced(cli, sandbox)[0]["id"])
    before = files_of(cli.db)

    with read_only(cli.db if what == "the file" else cli.db.parent):
        for args in (
            ("contacts", "add", "--first-name", "Nope", "--email", "nope@local.example"),
            ("contacts", "update", contact_id, "--city", "Nope"),
            ("reconcile",),
        ):
            result = cli(*args)

            assert result.exit_code == 78, (args, result.output)
            clean_failure(result.stderr)
            assert f"Error: The database {cli.db} is read-only." in result.stderr
            assert "Hint: Make the file and its directory writable" in result.stderr
            assert files_of(cli.db) == before
    assert sandbox.count_contacts() == 5  # nothing reached GHL either
    assert integrity(cli.db) == "ok"


def test_a_read_only_directory_without_a_database_creates_nothing(
    cli: Cli, sandbox: Sandbox, tmp_path: Path
) -> None:
    directory = tmp_path / "data"
    directory.mkdir()
    cli.db = directory / "ghlsync.db"

    with read_only(directory):
        result = cli.run("connect", "--location-id", cli.location_id)

    assert result.returncode == 78, result.stderr
    clean_failure(result.stderr)
    assert f"Error: Cannot create the database {cli.db}" in result.stderr
    assert list(directory.iterdir()) == []


def test_a_directory_given_as_the_database_is_a_configuration_error(
    cli: Cli, tmp_path: Path
) -> None:
    cli.db = tmp_path

    result = cli.run("status")

    assert result.returncode == 78, result.stderr  # fix --db: not "try again later" (75)
    clean_failure(result.stderr)
    assert f"Error: Cannot open the database {tmp_path}: it is a directory." in result.stderr
    assert "Hint: Point --db (or GHLSYNC_DB) at a file in a writable directory." in result.stderr


# ---- a full disk ---------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A directory on its own 32 MiB tmpfs, so that filling it gives SQLite a real ENOSPC."""
    directory = tmp_path / "small-disk"
    directory.mkdir()
    if not IS_ROOT or shutil.which("mount") is None:
        pytest.skip("a real full disk needs a small filesystem, and mounting one needs root")
    if not mount("-t", "tmpfs", "-o", "size=32m,mode=0700", "tmpfs", str(directory)):
        pytest.skip("running as root but not allowed to mount a tmpfs here")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "--lazy", str(directory)], check=True)


def fill(directory: Path, *, leave: int) -> Path:
    """Fill the filesystem of ``directory`` until about ``leave`` bytes are free."""
    filler = directory / "filler"
    with filler.open("wb") as out:
        chunk = b"\0" * 65536
        try:
            while True:
                out.write(chunk)
                out.flush()
        except OSError:
            pass
    os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


def test_a_full_disk_mid_sync_keeps_whole_pages_and_the_rerun_resumes(
    cli: Cli, sandbox: Sandbox, small_disk: Path
) -> None:
    cli.db = small_disk / "ghlsync.db"
    sandbox.seed(2000, seed=62)
    cli.connect()
    # Pages arrive at a network's pace, so each commits on its own before the next arrives. (On
    # loopback they can all arrive before the first is merged, and then commit as one group: the
    # disk would fill before anything was committed.)
    sandbox.faults.set_rules(
        [FaultRule(path_regex="^/contacts/search$", mode="delay", delay_ms=50)]
    )
    filler = fill(small_disk, leave=800_000)

    result = cli.run("initial-sync", GHLSYNC_PAGE_LIMIT="100")

    assert result.returncode == 75, result.stderr
    clean_failure(result.stderr)
    assert f"Error: The disk holding {cli.db} is full." in result.stderr
    assert "Hint: Free some disk space; nothing was half-written." in result.stderr
    assert integrity(cli.db) == "ok"
    committed = len(contact_rows(cli.db))
    assert 0 < committed < 2000
    assert committed % 100 == 0  # whole pages, each with its cursor

    filler.unlink()
    sandbox.faults.clear()
    report = cli.json("initial-sync", GHLSYNC_PAGE_LIMIT="100")

    assert report["resumed"] is True
    assert report["pull"]["created"] == 2000 - committed
    assert_converged(cli, sandbox, why="after freeing the disk")


def test_a_full_disk_makes_serve_answer_429_and_the_retry_is_stored(
    cli: Cli, sandbox: Sandbox, small_disk: Path
) -> None:
    cli.db = small_disk / "ghlsync.db"
    synced(cli, sandbox, 20)
    ghl_id = sandbox.list_contacts()[0]["id"]
    verifier = SignatureVerifier.load([WEBHOOK_PUBLIC_KEY_PATH])
    # Big enough that storing it needs disk space the full disk no longer has.
    body = event("ContactUpdate", ghl_id=ghl_id, city="Stored Later", notes="x" * 400_000)
    raw = encode(body)
    headers = {"Content-Type": "application/json", "X-GHL-Signature": sign_body(raw)}
    app = create_app(ServeConfig(db=cli.db, verifier=verifier, busy_timeout_ms=500))
    with (
        ThreadedServer(app, name="receiver") as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        filler = fill(small_disk, leave=0)

        refused = http.post("/webhooks/ghl", content=raw, headers=headers)

        assert refused.status_code == 429, refused.text  # GHL keeps it and retries
        assert refused.headers["Retry-After"]
        filler.unlink()

        accepted = http.post("/webhooks/ghl", content=raw, headers=headers)

        assert accepted.status_code == 200, accepted.text
        assert accepted.json()["duplicate"] is False
        wait_for(
            lambda: http.get("/healthz").json()["inbox_backlog"] == 0,
            timeout=10,
            what="the stored webhook to be applied",
        )
    [stored] = rows(cli.db, "inbox")
    assert stored["status"] == "applied", stored
    city = {r["ghl_id"]: r["city"] for r in contact_rows(cli.db)}[ghl_id]
    assert city == "Stored Later"
    assert integrity(cli.db) == "ok"
