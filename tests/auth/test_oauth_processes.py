"""Real processes sharing the opt-in secrets file: one refresh for two processes, and a crash
between GHL's token answer and the save (the refresh token is then spent: exit 77, no loop)."""

from __future__ import annotations

import json
import subprocess

import pytest

from ghlsync_cli.sandbox import FaultRule, Sandbox
from tests.auth.support import (
    OAuthApp,
    authorize_base,
    connect_in_process,
    secrets_file_values,
)
from tests.helpers import Cli

SEARCH = "POST /contacts/search"


@pytest.fixture
def file_cli(cli: Cli, tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> Cli:
    """The CLI with no GHLSYNC_TOKEN, secrets in an opt-in file (shared by subprocesses)."""
    cli.token = None
    secrets_file = cli.db.parent / "secrets" / "ghlsync-secrets.json"
    monkeypatch.setenv("GHLSYNC_SECRETS_FILE", str(secrets_file))
    monkeypatch.setenv("GHLSYNC_OAUTH_AUTHORIZE_URL", authorize_base(cli))
    return cli


def finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=60)
    return process.returncode, out, err


def test_two_processes_refreshing_at_once_make_one_refresh_call(
    file_cli: Cli, sandbox: Sandbox, oauth: OAuthApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli = file_cli
    sandbox.seed(5, seed=51)
    assert connect_in_process(cli, oauth, monkeypatch).exit_code == 0
    assert cli.json("initial-sync")["pull"]["created"] == 5
    edited_here, edited_in_ghl = cli.json("contacts", "list")[:2]
    contact_id = edited_here["id"]
    sandbox.ui_update_contact(edited_in_ghl["ghl_id"], {"city": "Austin"})
    secrets_file = cli.db.parent / "secrets" / "ghlsync-secrets.json"
    before = secrets_file_values(secrets_file)
    oauth.provider.expire_access_tokens()
    # A slow token endpoint: whoever refreshes first holds the lock for 2 s, so the other one
    # surely arrives while it is held.
    sandbox.faults.set_rules(
        [FaultRule(path_regex="^/oauth/token$", mode="delay", delay_ms=2000, count=1)]
    )

    timer_run = cli.spawn("reconcile", "--json")
    user_edit = cli.spawn("contacts", "update", contact_id, "--company", "Acme", "--json")
    reconciled, edited = finish(timer_run), finish(user_edit)

    assert reconciled[0] == 0, reconciled[2]
    assert edited[0] == 0, edited[2]
    assert json.loads(reconciled[1])["pull"]["updated"] == 1
    pushed = sandbox.find_contact(edited_here["ghl_id"])
    assert pushed is not None and pushed["companyName"] == "Acme"
    # Both used the expired token, both got 401, only one refreshed: the other waited on the
    # lock, re-read the file and used the new pair.
    assert oauth.provider.expired_token_uses == 2
    assert oauth.provider.refresh_calls == 1
    after = secrets_file_values(secrets_file)
    location = "sandboxLocation00001"
    assert after[f"{location}:refresh_token"] != before[f"{location}:refresh_token"]


def test_a_crash_after_the_token_answer_means_reconnect_next_time_without_a_loop(
    file_cli: Cli, sandbox: Sandbox, oauth: OAuthApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli = file_cli
    sandbox.seed(3, seed=52)
    assert connect_in_process(cli, oauth, monkeypatch).exit_code == 0
    secrets_file = cli.db.parent / "secrets" / "ghlsync-secrets.json"
    before = secrets_file_values(secrets_file)
    oauth.provider.expire_access_tokens()
    searches = sandbox.stats.requests(SEARCH)

    crashed = cli.run("reconcile", GHLSYNC_CRASH_AT="after-token-refresh")

    assert crashed.returncode == 137, crashed.stderr
    assert oauth.provider.refresh_calls == 1  # GHL rotated the pair...
    assert secrets_file_values(secrets_file) == before  # ...and we never saved the new one

    rerun = cli.run("reconcile")

    assert rerun.returncode == 77, rerun.stderr
    assert "Error: GHL refused to refresh the access token (400)" in rerun.stderr
    assert "Invalid grant: refresh token is invalid" in rerun.stderr
    assert "Hint: Authorize ghlsync anew: run ghlsync connect again" in rerun.stderr
    assert oauth.provider.refresh_calls == 2  # one attempt, no loop
    assert sandbox.stats.requests(SEARCH) - searches == 2  # one 401 per run
    assert "Traceback" not in rerun.stderr

    # Following the hint works.
    assert connect_in_process(cli, oauth, monkeypatch).exit_code == 0
    healed = cli.run("reconcile", "--json")
    assert healed.returncode == 0, healed.stderr
    assert json.loads(healed.stdout)["pull"]["created"] == 3
