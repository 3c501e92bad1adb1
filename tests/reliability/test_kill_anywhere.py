"""``kill -9`` at random moments of initial-sync, reconcile and push, then a rerun converges.

Each loop makes changes on both sides, starts the command as a real process against a sandbox
that answers slowly (``delay`` faults, so there is a window to kill in), SIGKILLs it at a moment
drawn from a seeded RNG, checks the file, reruns the command to completion and checks that both
sides are equal, nothing is duplicated and the cursor never moved backwards.

Named crash points cover the two windows a random kill rarely hits: after GHL answered a create
but before the local commit, and after an OAuth refresh but before the new tokens were saved.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from ghlsync_cli.crashpoints import ENV as CRASH_ENV
from ghlsync_cli.sandbox import FaultRule, Sandbox
from ghlsync_cli.sandbox.clock import ms_from_value
from ghlsync_cli.sandbox.webhooks import CONTACT_CREATE, build_event
from tests.helpers import Cli, contact_rows
from tests.reliability.support import (
    Changes,
    HighWater,
    Interrupted,
    Observer,
    assert_converged,
    assert_created_once,
    integrity,
    kill_at_random_moment,
    loop_sizes,
)
from tests.webhooks.support import wait_for

SOURCE = Path(__file__).resolve().parents[2] / "ghlsync_cli"


def slow(*rules: tuple[str, int]) -> list[FaultRule]:
    """Every request to these paths answers after ``delay_ms``: a window to be killed in."""
    return [FaultRule(path_regex=path, mode="delay", delay_ms=ms) for path, ms in rules]


SLOW_SEARCH = ("^/contacts/search$", 100)
SLOW_WRITES = ("^/contacts/(upsert|[^/]+(/tags)?)$", 60)


def assert_some_kill_landed(outcomes: list[Interrupted]) -> None:
    """The loop really interrupted runs (a loop of runs that all finished proves nothing)."""
    killed = sum(o.killed for o in outcomes)
    assert killed >= max(1, len(outcomes) // 2), [str(o) for o in outcomes]


def rerun_converges(
    cli: Cli,
    sandbox: Sandbox,
    changes: Changes,
    cursor: HighWater,
    why: str,
    *rerun: str,
    **env: str,
) -> None:
    """After a kill: the file is intact and the cursor did not move back; then the rerun (faults
    cleared) succeeds, and both sides converge with no contact created twice."""
    assert integrity(cli.db) == "ok", why
    cursor.check(why)
    sandbox.faults.clear()

    result = cli(*rerun, **env)

    assert result.exit_code == 0, (why, result.output)
    cursor.check(why)
    assert_converged(cli, sandbox, why=why)
    assert_created_once(sandbox, changes.pushed_names, why=why)


@pytest.mark.parametrize("runs", loop_sizes(3, 20))
def test_initial_sync_killed_anywhere_resumes_and_converges(
    cli: Cli,
    sandbox: Sandbox,
    observer: Observer,
    changes: Changes,
    rng: random.Random,
    runs: int,
) -> None:
    sandbox.seed(600, seed=31)
    cli.connect()
    cursor = HighWater(cli)
    outcomes: list[Interrupted] = []
    for run in range(runs):
        changes.in_ghl(updates=20, creates=3)
        changes.local_only(3)
        sandbox.faults.set_rules(slow(SLOW_SEARCH, SLOW_WRITES))

        outcome = kill_at_random_moment(
            cli, observer, ["initial-sync"], rng=rng, window=(0.0, 1.4), GHLSYNC_PAGE_LIMIT="100"
        )
        outcomes.append(outcome)
        why = f"run {run}: {outcome}"
        rerun_converges(
            cli, sandbox, changes, cursor, why, "initial-sync", GHLSYNC_PAGE_LIMIT="100"
        )
    assert_some_kill_landed(outcomes)


@pytest.mark.parametrize("runs", loop_sizes(3, 20))
def test_reconcile_killed_anywhere_converges(
    cli: Cli,
    sandbox: Sandbox,
    observer: Observer,
    changes: Changes,
    rng: random.Random,
    runs: int,
) -> None:
    sandbox.seed(300, seed=32)
    cli.connect()
    assert cli("initial-sync").exit_code == 0
    cursor = HighWater(cli)
    cursor.check("after initial-sync")
    outcomes: list[Interrupted] = []
    for run in range(runs):
        changes.in_ghl(updates=15, creates=2, deletes=1)
        changes.in_sqlite(updates=6)
        changes.local_only(3)
        sandbox.faults.set_rules(slow(SLOW_SEARCH, SLOW_WRITES))
        args = ["reconcile", "--full"] if rng.random() < 0.3 else ["reconcile"]

        outcome = kill_at_random_moment(
            cli, observer, args, rng=rng, window=(0.0, 1.4), GHLSYNC_PAGE_LIMIT="50"
        )
        outcomes.append(outcome)
        why = f"run {run} ({' '.join(args)}): {outcome}"
        # --full also finds the contacts deleted in GHL, so "active" means "GHL has it".
        rerun_converges(
            cli, sandbox, changes, cursor, why, "reconcile", "--full", GHLSYNC_PAGE_LIMIT="50"
        )
    assert_some_kill_landed(outcomes)


@pytest.mark.parametrize("runs", loop_sizes(3, 20))
def test_push_pending_killed_anywhere_never_duplicates(
    cli: Cli,
    sandbox: Sandbox,
    observer: Observer,
    changes: Changes,
    rng: random.Random,
    runs: int,
) -> None:
    # GHL set to accept duplicates: a create sent twice would really make a second contact.
    sandbox.set_allow_duplicates(True)
    sandbox.seed(150, seed=33)
    cli.connect()
    assert cli("initial-sync").exit_code == 0
    cursor = HighWater(cli)
    cursor.check("after initial-sync")
    outcomes: list[Interrupted] = []
    for run in range(runs):
        changes.in_sqlite(updates=12)
        changes.local_only(6)
        sandbox.faults.set_rules(slow(SLOW_WRITES))

        outcome = kill_at_random_moment(
            cli, observer, ["push", "--pending"], rng=rng, window=(0.0, 1.2)
        )
        outcomes.append(outcome)
        rerun_converges(cli, sandbox, changes, cursor, f"run {run}: {outcome}", "push", "--pending")
    assert_some_kill_landed(outcomes)


# ---- named crash points --------------------------------------------------------------------------

KINDS = ("email", "phone", "name")
COMMANDS = (("push", "--pending"), ("reconcile",), ("initial-sync",))


@pytest.mark.parametrize("runs", loop_sizes(3, 9))
def test_a_crash_after_ghl_created_a_contact_never_creates_it_twice(
    cli: Cli, sandbox: Sandbox, changes: Changes, runs: int
) -> None:
    """The process dies after GHL's create answer, before the link is committed; then reruns.

    Covers each kind of contact (matched by email, by phone, or by name only, which upsert cannot
    deduplicate) under each command that pushes; the long run covers every combination.
    """
    sandbox.set_allow_duplicates(True)
    sandbox.seed(20, seed=34)
    cli.connect()
    assert cli("initial-sync").exit_code == 0
    for run in range(runs):
        kind, command = KINDS[run % 3], COMMANDS[(run + run // 3) % 3]
        why = f"run {run}: {' '.join(command)}, a contact with {kind} only"
        changes.local_only(2, kinds=(kind,))
        before = sandbox.count_contacts()

        crashed = cli.run(*command, **{CRASH_ENV: "after-create-response"})

        assert crashed.returncode == 137, (why, crashed.stderr)
        assert sandbox.count_contacts() == before + 1, why  # GHL has it; the link is not saved
        assert integrity(cli.db) == "ok", why

        rerun = cli(*command)

        assert rerun.exit_code == 0, (why, rerun.output)
        assert sandbox.count_contacts() == before + 2, why
        assert_converged(cli, sandbox, why=why)
        assert_created_once(sandbox, changes.pushed_names, why=why)


def test_the_create_webhook_arriving_first_links_the_interrupted_create(
    cli: Cli, sandbox: Sandbox, tmp_path: Path
) -> None:
    """After the crash, GHL's ContactCreate webhook for the contact arrives before any retry.

    It must be recognised as the interrupted create (a contact with a name only: nothing else to
    match on), not stored as a second local contact that the retry would then duplicate in GHL.
    """
    sandbox.set_allow_duplicates(True)
    cli.connect()
    crashed = cli.run(
        "contacts",
        "add",
        "--first-name",
        "Webhook",
        "--last-name",
        "First",
        **{CRASH_ENV: "after-create-response"},
    )
    assert crashed.returncode == 137, crashed.stderr
    [created] = sandbox.list_contacts()
    webhook = build_event(
        CONTACT_CREATE, cli.location_id, created, ms_from_value(created["dateAdded"])
    )
    saved = tmp_path / "create.json"
    saved.write_text(json.dumps(webhook))

    replayed = cli.json("replay-webhook", str(saved))  # the pipeline serve uses

    assert replayed["events"][0]["outcome"] == "updated", replayed
    [row] = contact_rows(cli.db)
    assert row["ghl_id"] == created["id"]
    assert cli.json("push", "--pending")["created"] == 0
    assert_created_once(sandbox, [("Webhook", "First")], why="webhook before the retry")
    assert_converged(cli, sandbox, why="webhook before the retry")


def _has_crash_point(name: str) -> bool:
    return any(f'"{name}"' in path.read_text() for path in SOURCE.rglob("*.py"))


@pytest.mark.skipif(
    not _has_crash_point("after-token-refresh"),
    reason="the after-token-refresh crash point is not in ghlsync_cli yet (OAuth refresh)",
)
def test_a_crash_after_a_token_refresh_mid_sync_keeps_every_committed_page(
    cli: Cli, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GHL rotates the OAuth pair in the middle of an initial-sync and the process dies before
    saving the new one. The spent refresh token means "reconnect" (77, tested with the OAuth
    flow itself); here: the pages committed before the crash stay, whole, through the crash and
    the refused rerun, and after reconnecting the sync resumes where it stopped."""
    from tests.auth.support import authorize_base, connect_in_process, oauth_app

    cli.token = None  # OAuth tokens in an opt-in secrets file, shared with the subprocesses
    monkeypatch.setenv("GHLSYNC_SECRETS_FILE", str(cli.db.parent / "secrets.json"))
    monkeypatch.setenv("GHLSYNC_OAUTH_AUTHORIZE_URL", authorize_base(cli))
    app_setup = oauth_app(sandbox)
    app = next(app_setup)
    try:
        sandbox.seed(1500, seed=35)
        assert connect_in_process(cli, app, monkeypatch).exit_code == 0
        sandbox.faults.set_rules(slow(("^/contacts/search$", 200)))
        refreshes = app.provider.refresh_calls

        with cli.spawn(
            "initial-sync", GHLSYNC_PAGE_LIMIT="100", **{CRASH_ENV: "after-token-refresh"}
        ) as run:
            wait_for(lambda: row_count(cli.db) >= 200, timeout=30, what="two committed pages")
            app.provider.expire_access_tokens()  # the next page meets a 401, then a refresh
            _, stderr = run.communicate(timeout=60)

        assert run.returncode == 137, stderr
        assert app.provider.refresh_calls == refreshes + 1
        committed = row_count(cli.db)
        assert integrity(cli.db) == "ok"
        assert 200 <= committed < 1500 and committed % 100 == 0  # whole pages only
        sandbox.faults.clear()

        refused = cli.run("initial-sync", GHLSYNC_PAGE_LIMIT="100")

        assert refused.returncode == 77, refused.stderr
        assert app.provider.refresh_calls == refreshes + 2  # one try, no loop
        assert row_count(cli.db) == committed

        assert connect_in_process(cli, app, monkeypatch).exit_code == 0
        report = cli.json("initial-sync", GHLSYNC_PAGE_LIMIT="100")

        assert report["resumed"] is True
        assert report["pull"]["created"] == 1500 - committed
        assert_converged(cli, sandbox, why="after reconnecting")
    finally:
        next(app_setup, None)


def row_count(db: Path) -> int:
    """Committed contact rows (0 before the schema exists)."""
    return len(contact_rows(db)) if db.exists() else 0
