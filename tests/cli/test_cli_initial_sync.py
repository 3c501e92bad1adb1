"""``ghlsync initial-sync`` through the real CLI against the sandbox on loopback.

Each test is a user session: seed GHL, connect, run the command, then look at the SQLite file the
way any other program would (plain ``sqlite3``), and at what the sandbox saw.
"""

from __future__ import annotations

import gc
import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ghlsync_cli.sandbox import DEFAULT_LOCATION_ID, FaultRule, Sandbox
from ghlsync_cli.store import TEMP_STORE_MEMORY, Store
from tests.helpers import Cli

SEARCH = "^/contacts/search$"
PAGE = 500  # the default pageLimit, GHL's maximum


def read_only(db: Path) -> sqlite3.Connection:
    """A read-only connection, as a reader next to a running sync would open it."""
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)


def ghl_ids(db: Path) -> list[str]:
    """Every contact's ghl_id, with repeats if there are any."""
    conn = read_only(db)
    try:
        return [r[0] for r in conn.execute("SELECT ghl_id FROM contacts ORDER BY ghl_id")]
    finally:
        conn.close()


def row_count(db: Path) -> int:
    """Committed contact rows (0 while the schema does not exist yet)."""
    conn = read_only(db)
    try:
        return int(conn.execute("SELECT count(*) FROM contacts").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def integrity(db: Path) -> str:
    """``PRAGMA integrity_check``: "ok" for an intact file."""
    conn = read_only(db)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def first_page_ids(sandbox: Sandbox, limit: int = PAGE) -> set[str]:
    """The GHL ids of the first search page, as initial-sync asks for it."""
    page = sandbox.search_contacts(
        DEFAULT_LOCATION_ID,
        {
            "locationId": DEFAULT_LOCATION_ID,
            "pageLimit": limit,
            "sort": [{"field": "dateUpdated", "direction": "asc"}],
        },
    )
    return {record.id for record, _ in page.hits}


def sandbox_ids(sandbox: Sandbox) -> set[str]:
    """Every contact id GHL has."""
    return {c["id"] for c in sandbox.list_contacts()}


def searches(sandbox: Sandbox) -> int:
    """How many ``POST /contacts/search`` requests the sandbox answered."""
    return int(sandbox.stats.snapshot()["requests"].get("POST /contacts/search", 0))


def test_initial_sync_pulls_every_page_once_and_a_rerun_adds_nothing(
    cli: Cli, sandbox: Sandbox
) -> None:
    sandbox.seed(1234, seed=11)
    cli.connect()
    before = searches(sandbox)

    report = cli.json("initial-sync")

    assert report["pull"]["fetched"] == report["pull"]["created"] == report["total"] == 1234
    assert (report["pages"], report["api_calls"], report["resumed"]) == (3, 3, False)
    assert searches(sandbox) - before == 3  # 500 + 500 + 234: no page fetched twice
    ids = ghl_ids(cli.db)
    assert len(ids) == 1234
    assert set(ids) == sandbox_ids(sandbox)
    # What landed is what GHL has, field by field.
    local = {c["ghl_id"]: c for c in cli.json("contacts", "list")}
    for remote in sandbox.list_contacts():
        row = local[remote["id"]]
        assert row["first_name"] == (remote.get("firstName") or None)
        assert row["last_name"] == (remote.get("lastName") or None)
        assert row["email"] == (remote.get("email") or None)
        assert row["company"] == (remote.get("companyName") or None)
        assert row["tags"] == sorted(remote.get("tags") or [])
        assert row["status"] == "active"

    again = cli.json("initial-sync")

    assert again["pull"]["created"] == 0
    assert again["pull"]["unchanged"] == 1234
    assert again["resumed"] is False
    assert ghl_ids(cli.db) == ids


@pytest.mark.parametrize("command", ["initial-sync", "reconcile"])
def test_pulls_write_their_pages_with_statement_journals_in_memory(
    cli: Cli, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    sandbox.seed(700, seed=5)
    cli.connect()
    run = Store.run
    temp_stores: list[int] = []

    def recorded(self: Store, statements: Any) -> None:
        temp_stores.append(int(self.scalar("PRAGMA temp_store")))
        run(self, statements)

    monkeypatch.setattr(Store, "run", recorded)
    report = cli.json(command)

    assert report["pull"]["created"] == 700
    assert temp_stores and set(temp_stores) == {TEMP_STORE_MEMORY}


def test_a_slow_pull_frees_its_http_garbage_per_contacts_not_per_page(
    cli: Cli, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ghlsync_cli.sync import engine

    sandbox.seed(240, seed=9)
    cli.connect()
    # Pages of 20 arriving slowly (as at GHL's rate limit): each commits on its own.
    sandbox.faults.set_rules([FaultRule(path_regex=SEARCH, mode="delay", delay_ms=20)])
    monkeypatch.setattr(engine, "COLLECT_CONTACTS", 100)
    collections: list[int] = []
    collect = gc.collect

    def counted(*args: Any) -> int:
        collections.append(1)
        return collect(*args)

    monkeypatch.setattr(gc, "collect", counted)

    report = cli.json("initial-sync", GHLSYNC_PAGE_LIMIT="20")

    assert (report["pull"]["created"], report["pages"]) == (240, 12)
    assert len(collections) == 240 // 100  # not one per page


def test_a_429_storm_from_the_rate_limit_is_survived(cli: Cli, sandbox: Sandbox) -> None:
    sandbox.seed(1234, seed=12)
    cli.connect()
    sandbox.rate_limiter.configure(enabled=True, max_requests=5, interval_ms=300)
    refused_before = sandbox.stats.snapshot()["rate_limited"]
    stop = threading.Event()

    def hog() -> None:
        # Another app shares the location's limit and keeps it full until we were refused twice.
        deadline = time.monotonic() + 10
        while not stop.is_set() and time.monotonic() < deadline:
            sandbox.rate_limiter.check(DEFAULT_LOCATION_ID)
            if sandbox.stats.snapshot()["rate_limited"] - refused_before >= 2:
                return
            time.sleep(0.002)

    thread = threading.Thread(target=hog, name="quota-hog", daemon=True)
    thread.start()
    try:
        started = time.monotonic()
        # pageLimit 100: 13 pages, more than the 5-per-300-ms window allows back to back.
        result = cli("initial-sync", "--json", GHLSYNC_PAGE_LIMIT="100")
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        thread.join(5)

    assert result.exit_code == 0, result.output
    refused = sandbox.stats.snapshot()["rate_limited"] - refused_before
    # Refused only while the other app held the window: our own pacing never earned a 429.
    assert refused == 2
    # Each 429 said Retry-After: 1 and the client waited for it (its own backoff is 10-50 ms).
    assert elapsed >= refused * 1.0
    ids = ghl_ids(cli.db)
    assert len(ids) == len(set(ids)) == 1234


def test_injected_429_is_retried_after_retry_after(cli: Cli, sandbox: Sandbox) -> None:
    sandbox.seed(1234, seed=13)
    cli.connect()
    sandbox.faults.set_rules([FaultRule(path_regex=SEARCH, mode="status", status=429, count=1)])
    started = time.monotonic()

    report = cli.json("initial-sync")

    assert time.monotonic() - started >= 1.0  # the sandbox's Retry-After: 1
    assert sandbox.stats.snapshot()["faults"] == 1
    assert report["pull"]["created"] == 1234
    assert row_count(cli.db) == 1234


@pytest.mark.parametrize(
    "fault",
    [
        {"mode": "status", "status": 503, "count": 3, "skip": 1},
        {"mode": "status", "status": 502, "count": 2, "skip": 2},
        {"mode": "reset", "count": 3, "skip": 1},
    ],
    ids=["503x3", "502x2-last-page", "connection-reset-x3"],
)
def test_a_5xx_burst_mid_sync_is_retried(cli: Cli, sandbox: Sandbox, fault: dict[str, Any]) -> None:
    sandbox.seed(1234, seed=14)
    cli.connect()
    sandbox.faults.set_rules([FaultRule(path_regex=SEARCH, **fault)])

    report = cli.json("initial-sync")

    assert sandbox.stats.snapshot()["faults"] == fault["count"]
    assert report["pull"]["created"] == 1234
    assert report["pages"] == 3
    ids = ghl_ids(cli.db)
    assert len(ids) == len(set(ids)) == 1234


def test_a_5xx_burst_longer_than_the_retries_exits_69_and_a_rerun_resumes(
    cli: Cli, sandbox: Sandbox
) -> None:
    sandbox.seed(1234, seed=15)
    cli.connect()
    # GHLSYNC_RETRY_ATTEMPTS is 4 in tests: the second page fails every attempt.
    sandbox.faults.set_rules(
        [FaultRule(path_regex=SEARCH, mode="status", status=503, count=4, skip=1)]
    )

    result = cli("initial-sync", "--json")

    assert result.exit_code == 69, result.output
    assert "503" in result.stderr
    assert "gave up after 4 attempts" in result.stderr
    assert "Hint:" in result.stderr
    assert set(ghl_ids(cli.db)) == first_page_ids(sandbox)

    report = cli.json("initial-sync")

    assert report["resumed"] is True
    assert report["pull"]["created"] == 1234 - PAGE
    assert report["pull"]["fetched"] == 1234
    ids = ghl_ids(cli.db)
    assert len(ids) == len(set(ids)) == 1234


def test_a_token_revoked_mid_sync_exits_77_keeping_committed_pages(
    cli: Cli, sandbox: Sandbox
) -> None:
    sandbox.seed(1234, seed=19)
    cli.connect()
    sandbox.faults.set_rules([FaultRule(path_regex=SEARCH, mode="unauthorized", count=1, skip=1)])

    result = cli("initial-sync", "--json")

    assert result.exit_code == 77, result.output
    assert "Error: GHL rejected the access token" in result.stderr
    assert "Hint: Run: ghlsync connect" in result.stderr
    assert set(ghl_ids(cli.db)) == first_page_ids(sandbox)
    assert cli.json("initial-sync")["resumed"] is True
    assert row_count(cli.db) == 1234


def _wait_for_rows(
    db: Path, proc: subprocess.Popen[str], *, at_least: int, timeout: float = 30
) -> int:
    """Poll the file read-only until ``at_least`` rows are committed; the count then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        count = row_count(db)
        if count >= at_least:
            return count
        assert proc.poll() is None, "initial-sync ended before any page was committed"
        time.sleep(0.02)
    raise AssertionError(f"no page committed within {timeout} s")


def test_a_run_killed_midway_resumes_without_duplicates(cli: Cli, sandbox: Sandbox) -> None:
    sandbox.seed(3000, seed=16)
    cli.connect()
    # Every page after the first is slow, so the kill lands between two committed pages.
    sandbox.faults.set_rules([FaultRule(path_regex=SEARCH, mode="delay", delay_ms=1000, skip=1)])

    with cli.spawn("initial-sync", "--json") as proc:
        try:
            _wait_for_rows(cli.db, proc, at_least=1)
            # A second run meanwhile is refused at once: one run per location.
            concurrent = cli("initial-sync", "--json")
            assert concurrent.exit_code == 75, concurrent.output
            assert "Another ghlsync run" in concurrent.stderr
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert proc.returncode == -signal.SIGKILL

    committed = row_count(cli.db)
    assert integrity(cli.db) == "ok"
    assert 0 < committed < 3000
    assert committed % PAGE == 0  # whole pages only: each page commits with its cursor
    assert len(set(ghl_ids(cli.db))) == committed
    sandbox.faults.clear()

    report = cli.json("initial-sync")

    assert report["resumed"] is True
    assert report["pull"]["created"] == 3000 - committed  # committed pages are not refetched
    assert report["pull"]["fetched"] == 3000
    ids = ghl_ids(cli.db)
    assert len(ids) == len(set(ids)) == 3000
    assert set(ids) == sandbox_ids(sandbox)
    assert integrity(cli.db) == "ok"
    runs = cli.json("status")["locations"][0]["last_runs"]
    assert runs["initial-sync"]["outcome"] == "ok"


def test_ctrl_c_midway_exits_130_and_a_rerun_resumes(cli: Cli, sandbox: Sandbox) -> None:
    sandbox.seed(3000, seed=20)
    cli.connect()
    sandbox.faults.set_rules([FaultRule(path_regex=SEARCH, mode="delay", delay_ms=1000, skip=1)])

    with cli.spawn("initial-sync") as proc:
        try:
            _wait_for_rows(cli.db, proc, at_least=1)
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()

    assert proc.returncode == 130, stderr
    assert "Interrupted." in stderr
    assert "Hint: Rerun the same command: it resumes where it stopped." in stderr
    committed = row_count(cli.db)
    assert 0 < committed < 3000
    assert committed % PAGE == 0
    run = cli.json("status")["locations"][0]["last_runs"]["initial-sync"]
    assert run["outcome"] == "interrupted"
    sandbox.faults.clear()

    report = cli.json("initial-sync")

    assert report["resumed"] is True
    assert report["pull"]["created"] == 3000 - committed
    assert row_count(cli.db) == len(set(ghl_ids(cli.db))) == 3000


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("malformed", "not a valid SearchResponse"),
        ("truncated", "not a valid SearchResponse"),
        ("wrong_shape", "not a valid SearchResponse"),
        ("stuck_cursor", "pagination cursor did not advance"),
    ],
)
def test_a_malformed_page_exits_69_and_commits_nothing_from_it(
    cli: Cli, sandbox: Sandbox, mode: str, message: str
) -> None:
    sandbox.seed(1234, seed=17)
    cli.connect()
    sandbox.faults.set_rules([FaultRule(path_regex=SEARCH, mode=mode, count=1, skip=1)])

    result = cli("initial-sync", "--json")

    assert result.exit_code == 69, result.output
    assert result.stdout == ""
    assert "Error: GHL" in result.stderr
    assert message in result.stderr
    assert "Hint: Nothing from this response was saved" in result.stderr
    # The first page is committed whole; nothing of the bad second page is.
    assert set(ghl_ids(cli.db)) == first_page_ids(sandbox)
    assert row_count(cli.db) == PAGE
    run = cli.json("status")["locations"][0]["last_runs"]["initial-sync"]
    assert run["outcome"] == "failed"
    assert message in run["error"]

    report = cli.json("initial-sync")

    assert report["resumed"] is True
    assert report["pull"]["created"] == 1234 - PAGE
    assert row_count(cli.db) == len(set(ghl_ids(cli.db))) == 1234


def closed_port_url() -> str:
    """A loopback URL where nothing listens (connections are refused at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_a_dead_network_exits_69_quickly_with_a_hint(cli: Cli, sandbox: Sandbox) -> None:
    sandbox.seed(10, seed=18)
    cli.connect()
    dead = closed_port_url()
    started = time.monotonic()

    result = cli("initial-sync", "--json", GHLSYNC_API_BASE=dead)

    assert time.monotonic() - started < 3
    assert result.exit_code == 69, result.output
    assert result.stdout == ""
    assert "Error: POST /contacts/search failed: network error (ConnectError" in result.stderr
    assert "gave up after 4 attempts" in result.stderr
    assert "Hint: GHL or the network is unavailable; rerun later" in result.stderr
    assert row_count(cli.db) == 0


def test_retries_print_nothing_but_the_error_and_hint_in_a_real_process(
    cli: Cli, sandbox: Sandbox
) -> None:
    cli.connect()

    # A real process: no test harness has configured logging for it, as under cron.
    result = cli.run("initial-sync", timeout=30, GHLSYNC_API_BASE=closed_port_url())

    assert result.returncode == 69, result.stderr
    lines = result.stderr.splitlines()
    assert [line.split(":")[0] for line in lines] == ["Error", "Hint"], lines


def test_connect_on_a_dead_network_exits_69(cli: Cli) -> None:
    result = cli("connect", "--location-id", cli.location_id, GHLSYNC_API_BASE=closed_port_url())

    assert result.exit_code == 69, result.output
    assert "network error" in result.stderr
    assert "Hint:" in result.stderr
    assert cli.json("status")["locations"] == []


def test_local_contacts_are_linked_by_email_or_pushed_never_duplicated(
    cli: Cli, sandbox: Sandbox
) -> None:
    sandbox.seed(50, seed=27)
    cli.connect()
    known = next(c for c in sandbox.list_contacts() if c.get("email"))
    # Another program adds two contacts before the first sync: one GHL already has (the email
    # in another case), one it does not.
    conn = sqlite3.connect(cli.db)
    with conn:
        conn.executemany(
            "INSERT INTO contacts (id, location_id, first_name, email) VALUES (?, ?, ?, ?)",
            [
                ("local-known", DEFAULT_LOCATION_ID, "Known", known["email"].upper()),
                ("local-new", DEFAULT_LOCATION_ID, "Newton", "newton@example.org"),
            ],
        )
    conn.close()

    report = cli.json("initial-sync")

    assert report["pull"]["linked"] == 1
    assert report["pull"]["created"] == 49
    assert report["push"]["created"] == 1
    assert report["push"]["queued"] == 0
    rows = {r["id"]: r for r in cli.json("contacts", "list")}
    assert len(rows) == 51
    assert rows["local-known"]["ghl_id"] == known["id"]
    # GHL's values won on the linked contact; the local values it replaced are kept as conflicts.
    assert rows["local-known"]["first_name"] == known["firstName"]
    losing = {c["field"]: c["local_value"] for c in cli.json("conflicts", "list")}
    assert losing == {"first_name": "Known", "email": known["email"].upper()}
    assert report["pull"]["conflicts"] == 2
    pushed = sandbox.find_contact(rows["local-new"]["ghl_id"])
    assert pushed is not None
    assert (pushed["firstName"], pushed["email"]) == ("Newton", "newton@example.org")
    assert sandbox.count_contacts() == 51
    ids = ghl_ids(cli.db)
    assert len(ids) == len(set(ids)) == 51

    again = cli.json("initial-sync")

    assert (again["pull"]["created"], again["push"]["created"]) == (0, 0)
    assert sandbox.count_contacts() == 51


def test_a_local_id_another_contact_holds_is_not_reused(cli: Cli, sandbox: Sandbox) -> None:
    from ghlsync_cli.store import contact_id_for

    sandbox.seed(3, seed=5)
    first = sandbox.list_contacts()[0]["id"]
    derived = contact_id_for(DEFAULT_LOCATION_ID, first)
    cli.connect()
    conn = sqlite3.connect(cli.db)
    with conn:  # another program's contact happens to hold the id derived from `first`
        conn.execute(
            "INSERT INTO contacts (id, location_id, first_name, email) "
            "VALUES (?, ?, 'Squatter', 'squatter@example.com')",
            (derived, DEFAULT_LOCATION_ID),
        )
    conn.close()

    report = cli.json("initial-sync")

    assert (report["pull"]["created"], report["push"]["created"]) == (3, 1)
    rows = {r["ghl_id"]: r for r in cli.json("contacts", "list")}
    assert rows[first]["id"] == contact_id_for(DEFAULT_LOCATION_ID, first, 1)
    squatter = cli.json("contacts", "show", derived)
    assert squatter["first_name"] == "Squatter" and squatter["ghl_id"] not in (None, first)
    assert len(rows) == 4 == len(sandbox.list_contacts())
    assert cli.json("initial-sync")["pull"]["created"] == 0  # a rerun finds every contact


def test_ghl_contacts_whose_ids_derive_alike_in_one_page_get_distinct_local_ids(
    cli: Cli, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ghlsync_cli.store import contact_id_for
    from ghlsync_cli.sync import engine

    def colliding(location_id: str, ghl_id: str, attempt: int = 0) -> str:
        # As if every GHL id hashed to the same 48 bits on the first derivation.
        return "000000000000" if attempt == 0 else contact_id_for(location_id, ghl_id, attempt)

    monkeypatch.setattr(engine, "contact_id_for", colliding)
    sandbox.seed(3, seed=6)
    cli.connect()

    assert cli.json("initial-sync")["pull"]["created"] == 3

    ids = sorted(r["id"] for r in cli.json("contacts", "list"))
    expected = {"000000000000"} | {
        contact_id_for(DEFAULT_LOCATION_ID, c["id"], 1) for c in sandbox.list_contacts()
    }
    assert len(ids) == 3 and set(ids) < expected
