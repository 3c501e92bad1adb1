"""GHL at its worst: 5xx storms, answers slower than the timeout, cut bodies, a cursor that never
moves, a token rejected on every call, and a rate limit shared with another busy app.

For each the tool promises a bounded, honest outcome: it completes, or it stops with the contract's
exit code (69 unavailable, 77 reconnect) without looping, keeping what it committed and nothing
half-applied; and a later run converges without duplicates.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from ghlsync_cli.sandbox import DEFAULT_LOCATION_ID, FaultRule, Sandbox, SandboxServer
from tests.helpers import Cli, contact_rows
from tests.reliability.support import (
    Changes,
    HighWater,
    Observer,
    assert_converged,
    assert_created_once,
    loop_sizes,
)

SEARCH = "^/contacts/search$"
UPSERT = "^/contacts/upsert$"
SEARCH_ROUTE = "POST /contacts/search"


def searches(sandbox: Sandbox) -> int:
    return sandbox.stats.requests(SEARCH_ROUTE)


def synced(cli: Cli, sandbox: Sandbox, count: int, *, seed: int) -> None:
    """GHL seeded with ``count`` contacts, connected and pulled once."""
    sandbox.seed(count, seed=seed)
    cli.connect()
    result = cli("initial-sync")
    assert result.exit_code == 0, result.output


# ---- 5xx ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("rounds", loop_sizes(1, 8))
def test_sync_completes_while_30_percent_of_requests_get_503(
    cli: Cli, sandbox: Sandbox, changes: Changes, rounds: int
) -> None:
    sandbox.seed(800, seed=41)
    cli.connect()
    changes.local_only(4, kinds=("email", "phone"))
    # Every API route, reads and writes; the sandbox's RNG is seeded, so the storm repeats exactly.
    sandbox.faults.set_rules(
        [FaultRule(path_regex="^/contacts", mode="status", status=503, rate=0.3)]
    )
    # 12 tries per call: the chance that one call meets 12 503s in a row is 0.3^12, about 5e-7.
    patient = {"GHLSYNC_RETRY_ATTEMPTS": "12", "GHLSYNC_PAGE_LIMIT": "50"}

    result = cli("initial-sync", **patient)

    assert result.exit_code == 0, result.output
    assert_converged(cli, sandbox, why="initial-sync through 503s")
    for round_ in range(rounds):
        changes.in_ghl(updates=20, creates=2, deletes=1)
        changes.in_sqlite(updates=8)
        changes.local_only(2, kinds=("email", "phone"))

        result = cli("reconcile", "--full", **patient)

        assert result.exit_code == 0, (round_, result.output)
        assert_converged(cli, sandbox, why=f"reconcile round {round_} through 503s")
    assert_created_once(sandbox, changes.pushed_names, why="503 storm")
    stats = sandbox.stats.snapshot()
    assert stats["faults"] >= 0.15 * stats["total"], stats  # the storm really blew


# ---- timeouts ----------------------------------------------------------------------------------

QUICK_TIMEOUT = {"GHLSYNC_HTTP_TIMEOUT": "0.3"}


def test_answers_slower_than_the_timeout_are_retried_and_never_create_twice(
    cli: Cli, sandbox: Sandbox, observer: Observer
) -> None:
    # GHL set to accept duplicates: a create it received twice would show up as two contacts.
    sandbox.set_allow_duplicates(True)
    sandbox.seed(300, seed=42)
    cli.connect()
    sandbox.faults.set_rules(
        [FaultRule(path_regex=SEARCH, mode="delay", delay_ms=1000, count=2, skip=1)]
    )

    report = cli.json("initial-sync", GHLSYNC_PAGE_LIMIT="100", **QUICK_TIMEOUT)

    assert report["pull"]["created"] == 300
    assert searches(sandbox) == 1 + 4 + 2  # connect, 3 full pages and an empty one, 2 timeouts
    observer.settle()

    # A create whose answer is lost: with an email, upsert deduplicates, so it is retried.
    sandbox.faults.set_rules([FaultRule(path_regex=UPSERT, mode="delay", delay_ms=1000, count=1)])
    sandbox.stats.reset()
    row = cli.json(
        "contacts", "add", "--first-name", "Slow", "--email", "slow@late.example", **QUICK_TIMEOUT
    )
    observer.settle()  # GHL also finished the first, timed-out attempt
    assert sandbox.stats.requests("POST /contacts/upsert") == 2
    assert row["ghl_id"]
    assert [c["id"] for c in sandbox.list_contacts() if c.get("email") == "slow@late.example"] == [
        row["ghl_id"]
    ]

    # Without email or phone it is not repeated (GHL may have acted): queued, exit 75 ...
    sandbox.faults.set_rules([FaultRule(path_regex=UPSERT, mode="delay", delay_ms=1000, count=1)])
    sandbox.stats.reset()
    result = cli(
        "contacts", "add", "--first-name", "Slow", "--last-name", "Nameonly", **QUICK_TIMEOUT
    )
    observer.settle()
    assert result.exit_code == 75, result.output
    assert "queued" in result.stderr
    assert sandbox.stats.requests("POST /contacts/upsert") == 1

    # ... and the next push creates it once (finding it first, had GHL acted on the lost one).
    pushed = cli.json("push", "--pending")

    assert pushed["created"] == 1
    assert_created_once(sandbox, [("Slow", "Nameonly")], why="after push --pending")
    assert_converged(cli, sandbox, why="after timeouts")


def test_a_ghl_that_never_answers_in_time_exits_69_after_bounded_retries(
    cli: Cli, sandbox: Sandbox, observer: Observer
) -> None:
    synced(cli, sandbox, 50, seed=43)
    sandbox.ui_update_contact(sandbox.list_contacts()[0]["id"], {"city": "Never Seen"})
    rows_before = contact_rows(cli.db)
    cursor = HighWater(cli)
    cursor.check("before")
    sandbox.faults.set_rules([FaultRule(path_regex="^/contacts", mode="delay", delay_ms=2000)])
    sandbox.stats.reset()
    started = time.monotonic()

    result = cli("reconcile", **QUICK_TIMEOUT)

    elapsed = time.monotonic() - started
    assert result.exit_code == 69, result.output
    assert "ReadTimeout" in result.stderr
    assert "gave up after 4 attempts" in result.stderr
    assert "Hint: GHL or the network is unavailable" in result.stderr
    assert searches(sandbox) == 4  # GHLSYNC_RETRY_ATTEMPTS in tests: bounded, no loop
    assert elapsed < 4 * 0.3 + 3.0
    assert contact_rows(cli.db) == rows_before
    cursor.check("after the timeouts")
    assert cursor.marks[-1] == cursor.marks[0]
    assert cli.json("status")["locations"][0]["last_runs"]["reconcile"]["outcome"] == "failed"
    observer.settle()
    sandbox.faults.clear()

    assert cli("reconcile").exit_code == 0
    assert_converged(cli, sandbox, why="after GHL answered again")


# ---- malformed answers -------------------------------------------------------------------------


def test_a_truncated_page_exits_69_and_nothing_of_that_page_is_saved(
    cli: Cli, sandbox: Sandbox
) -> None:
    synced(cli, sandbox, 200, seed=44)
    cursor = HighWater(cli)
    cursor.check("after initial-sync")
    # 60 edits in a known order: reconcile reads them oldest first, 25 to a page.
    edited = [c["id"] for c in sandbox.list_contacts()[:60]]
    stamps = {}
    for n, ghl_id in enumerate(edited):
        stamps[ghl_id] = sandbox.ui_update_contact(ghl_id, {"city": f"Edit {n:02d}"})["dateUpdated"]
    sandbox.faults.set_rules([FaultRule(path_regex=SEARCH, mode="truncated", count=1, skip=1)])

    result = cli("reconcile", GHLSYNC_PAGE_LIMIT="25")

    assert result.exit_code == 69, result.output
    assert "not a valid SearchResponse" in result.stderr
    assert "Hint: Nothing from this response was saved" in result.stderr
    local = {r["ghl_id"]: r["city"] for r in contact_rows(cli.db)}
    arrived = [g for g in edited if local[g] and local[g].startswith("Edit ")]
    # The first page (the oldest edits) is committed whole; not one edit of the cut page is.
    assert 0 < len(arrived) <= 25
    assert arrived == edited[: len(arrived)]
    assert cursor.check("after the cut page") == stamps[arrived[-1]]
    sandbox.faults.clear()

    assert cli("reconcile", GHLSYNC_PAGE_LIMIT="25").exit_code == 0
    cursor.check("after the rerun")
    assert_converged(cli, sandbox, why="after the rerun")


def test_a_truncated_create_answer_is_found_again_not_created_twice(
    cli: Cli, sandbox: Sandbox
) -> None:
    sandbox.set_allow_duplicates(True)
    cli.connect()
    # GHL creates the contact, then the answer is cut in half: the client cannot read the id.
    sandbox.faults.set_rules([FaultRule(path_regex=UPSERT, mode="truncated", count=1)])

    result = cli("contacts", "add", "--first-name", "Cut", "--last-name", "Answer", "--json")

    assert result.exit_code == 75, result.output  # kept and queued: a later push finishes it
    assert "but GHL answered wrongly: GHL answered 200 to POST /contacts/upsert" in result.stderr
    assert "not a valid UpsertResponse" in result.stderr
    assert "The change is queued." in result.stderr
    assert json.loads(result.stdout)["ghl_id"] is None
    assert_created_once(sandbox, [("Cut", "Answer")], why="GHL acted on the cut create")
    [row] = contact_rows(cli.db)
    assert row["ghl_id"] is None  # kept locally, queued

    pushed = cli.json("push", "--pending")

    assert pushed["created"] == 1
    assert_created_once(sandbox, [("Cut", "Answer")], why="after push --pending")
    assert_converged(cli, sandbox, why="after the cut answer")


def test_a_cursor_that_never_advances_stops_reconcile_with_69(cli: Cli, sandbox: Sandbox) -> None:
    synced(cli, sandbox, 100, seed=45)
    for n, contact in enumerate(sandbox.list_contacts()[:60]):
        sandbox.ui_update_contact(contact["id"], {"city": f"Moved {n}"})
    sandbox.faults.set_rules([FaultRule(path_regex=SEARCH, mode="stuck_cursor")])
    sandbox.stats.reset()

    result = cli("reconcile", GHLSYNC_PAGE_LIMIT="25")

    assert result.exit_code == 69, result.output
    assert "pagination cursor did not advance" in result.stderr
    assert searches(sandbox) == 2  # the repeat is noticed at once: no loop
    moved = sum(1 for r in contact_rows(cli.db) if (r["city"] or "").startswith("Moved "))
    assert moved <= 25  # the first page at most; the repeated page was not applied again
    sandbox.faults.clear()

    assert cli("reconcile", GHLSYNC_PAGE_LIMIT="25").exit_code == 0
    assert_converged(cli, sandbox, why="after the cursor moved again")


# ---- credentials -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ("initial-sync",),
        ("reconcile",),
        ("push", "--pending"),
        ("contacts", "add", "--first-name", "Kept", "--email", "kept@local.example"),
    ],
    ids=lambda c: " ".join(c[:2]),
)
def test_a_token_rejected_on_every_request_exits_77_after_one_request(
    cli: Cli, sandbox: Sandbox, changes: Changes, command: tuple[str, ...]
) -> None:
    synced(cli, sandbox, 10, seed=46)
    changes.in_sqlite(updates=2)  # something to push
    sandbox.faults.set_rules([FaultRule(path_regex="^/", mode="unauthorized")])
    sandbox.stats.reset()

    result = cli(*command)

    assert result.exit_code == 77, result.output
    assert "Error: GHL rejected the access token" in result.stderr
    assert "Hint: Run: ghlsync connect" in result.stderr
    assert sandbox.stats.snapshot()["total"] == 1  # one request, then stop: no retry loop
    # What was queued (or just added) stays queued for after the reconnect.
    status = cli.json("status")["locations"][0]
    assert status["pushes"]["queued"] >= 2


# ---- rate limits -------------------------------------------------------------------------------

LIMIT, WINDOW = 20, 1.0


class Competitor:
    """Another app on the same location: fills the rate-limit window, then keeps using half of
    it. (Calling faster than the limit would leave ghlsync nothing: whether it got through at all
    would then depend on who wins each race for a freed slot, not on ghlsync.)"""

    HEADERS = {"Authorization": "Bearer competitor-token", "Version": "2021-07-28"}
    BODY = {"locationId": DEFAULT_LOCATION_ID, "pageLimit": 1}

    def __init__(self, sandbox: Sandbox, url: str) -> None:
        sandbox.add_token("competitor-token", DEFAULT_LOCATION_ID)
        self.url = url
        self.requests = 0
        self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._hammer, name="competitor", daemon=True)

    def start(self, *, burst: int) -> None:
        """Send ``burst`` calls at once (the window is then full), then keep calling."""
        with httpx.Client(base_url=self.url, headers=self.HEADERS, timeout=10) as http:
            for _ in range(burst):
                self._call(http)
        self._thread.start()

    def _call(self, http: httpx.Client) -> None:
        answer = http.post("/contacts/search", json=self.BODY)
        self.requests += 1
        self.refused += answer.status_code == 429

    def _hammer(self) -> None:
        with httpx.Client(base_url=self.url, headers=self.HEADERS, timeout=10) as http:
            while not self._stop.wait(WINDOW / (LIMIT / 2)):
                self._call(http)

    def stop(self) -> None:
        """Stop calling and wait for the thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)


@pytest.fixture
def competitor(sandbox: Sandbox, sandbox_server: SandboxServer) -> Iterator[Competitor]:
    """Another app sharing the location's rate limit, busy for the whole test."""
    other = Competitor(sandbox, sandbox_server.url)
    try:
        yield other
    finally:
        other.stop()


def test_a_429_storm_never_drives_the_client_past_the_limit(
    cli: Cli, sandbox: Sandbox, observer: Observer, competitor: Competitor
) -> None:
    sandbox.seed(500, seed=47)
    cli.connect()
    sandbox.rate_limiter.configure(enabled=True, max_requests=LIMIT, interval_ms=int(WINDOW * 1000))
    competitor.start(burst=LIMIT)
    first = observer.count()

    report = cli.json("initial-sync", GHLSYNC_PAGE_LIMIT="25", GHLSYNC_RETRY_ATTEMPTS="10")

    competitor.stop()
    ours = sorted(t for t, _, _ in observer.arrivals[first:])
    assert report["pull"]["created"] == 500
    # The other app had the window full when ghlsync started, so GHL refused ghlsync too.
    assert sandbox.stats.snapshot()["rate_limited"] > competitor.refused > 0
    # Whatever the other app did, ghlsync alone never sent more than GHL allows in any window.
    busiest = max(sum(1 for t in ours[i:] if t < start + WINDOW) for i, start in enumerate(ours))
    assert busiest <= LIMIT, busiest
    assert_converged(cli, sandbox, why="after the 429 storm")
