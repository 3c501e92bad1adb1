"""``ghlsync connect --oauth``: GHL's authorization-code flow through a loopback redirect, then
commands that refresh rotating tokens on their own; secrets stay out of argv, output, logs and the
database. The browser is played by httpx (``webbrowser.open`` is the process edge patched here).
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import keyring
import pytest
from keyring.backends import fail

from ghlsync_cli.sandbox import DEFAULT_LOCATION_ID, Sandbox
from tests.auth.support import (
    URL_PATTERN,
    FakeBrowser,
    OAuthApp,
    assert_absent,
    authorize_base,
    connect_in_process,
    database_bytes,
    follow,
    oauth_app,
    secrets_file_values,
)
from tests.fakes import MemoryKeyring
from tests.helpers import Cli

SECOND_LOCATION = "secondLocation000002"
SERVICE = "ghlsync"


@pytest.fixture
def oauth(sandbox: Sandbox) -> Iterator[OAuthApp]:
    """A marketplace app with a canary client secret, on a reset OAuth provider."""
    yield from oauth_app(sandbox)


@pytest.fixture
def oauth_cli(cli: Cli) -> Cli:
    """The CLI with no GHLSYNC_TOKEN: tokens come from the OAuth flow."""
    cli.token = None
    return cli


def stored_pair(ring: MemoryKeyring, location_id: str = DEFAULT_LOCATION_ID) -> dict[str, str]:
    return {
        kind: ring.secrets[(SERVICE, f"{location_id}:{kind}")]
        for kind in ("access_token", "refresh_token", "oauth")
    }


def test_connect_oauth_end_to_end_through_the_loopback_redirect(
    oauth_cli: Cli,
    sandbox: Sandbox,
    oauth: OAuthApp,
    memory_keyring: MemoryKeyring,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cli = oauth_cli
    sandbox.seed(6, seed=61)
    browser = FakeBrowser()

    result = connect_in_process(cli, oauth, monkeypatch, browser=browser)

    assert result.exit_code == 0, result.output
    (url,) = browser.urls
    assert url.startswith(f"{authorize_base(cli)}?response_type=code&redirect_uri=")
    assert re.search(r"redirect_uri=http%3A%2F%2F127\.0\.0\.1%3A\d+%2Fcallback&", url)
    assert f"&client_id={oauth.client_id}&scope=contacts.readonly%20contacts.write&state=" in url
    assert browser.responses[0].status_code == 200
    assert "ghlsync is authorized" in browser.responses[0].text
    assert "Opened the browser to authorize ghlsync" in result.stderr
    assert (
        f"Connected location {DEFAULT_LOCATION_ID} (6 contacts in GHL); token from OAuth, "
        "kept in the keyring." in result.stderr
    )
    pair = stored_pair(memory_keyring)
    assert pair["access_token"].startswith("sbx-at-")
    assert pair["refresh_token"].startswith("sbx-rt-")
    assert memory_keyring.secrets[(SERVICE, f"oauth-client:{oauth.client_id}")] == (
        oauth.client_secret
    )
    assert len(memory_keyring.secrets) == 4
    meta = json.loads(pair["oauth"])
    (location,) = cli.json("status")["locations"]
    assert location["token"] == {
        "kind": "oauth",
        "source": "keyring",
        "expires_at": meta["expires_at"],
    }
    assert cli.json("initial-sync")["pull"]["created"] == 6
    assert oauth.provider.refresh_calls == 0

    # The client secret was kept: connecting again needs only the client id.
    again = cli(
        "connect",
        "--oauth",
        "--client-id",
        oauth.client_id,
        "--json",
        GHLSYNC_OAUTH_AUTHORIZE_URL=authorize_base(cli),
    )
    browser.join()
    assert again.exit_code == 0, again.output
    report = json.loads(again.stdout)
    assert set(report) == {"location_id", "token", "contacts_in_ghl", "token_expires_at", "db"}
    assert (report["location_id"], report["token"]) == (DEFAULT_LOCATION_ID, "oauth")
    assert stored_pair(memory_keyring)["refresh_token"] != pair["refresh_token"]


def test_connect_oauth_no_browser_as_a_real_process_keeps_secrets_out_of_argv_and_output(
    oauth_cli: Cli, sandbox: Sandbox, oauth: OAuthApp, tmp_path: Path
) -> None:
    cli = oauth_cli
    secrets_file = tmp_path / "secrets.json"
    env = {
        **os.environ,
        **cli.env(
            GHLSYNC_SECRETS_FILE=str(secrets_file),
            GHLSYNC_OAUTH_AUTHORIZE_URL=authorize_base(cli),
        ),
    }
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "ghlsync_cli", "connect", "--oauth", "--no-browser"),
            *("--client-id", oauth.client_id, "--client-secret-stdin", "--timeout", "30"),
        ],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None and process.stderr is not None
    process.stdin.write(oauth.client_secret + "\n")
    process.stdin.flush()
    printed: list[str] = []
    while not (urls := URL_PATTERN.findall("".join(printed))):
        line = process.stderr.readline()
        assert line, "connect ended before printing the URL"
        printed.append(line)
    # While it waits for the browser, its command line and environment hold no secret.
    cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes()
    environ = Path(f"/proc/{process.pid}/environ").read_bytes()
    assert oauth.client_secret.encode() not in cmdline + environ

    callback = follow(urls[0])
    out, err = process.communicate(timeout=30)

    assert process.returncode == 0, err
    assert callback.status_code == 200
    assert "Open this URL in a browser to authorize ghlsync:" in "".join(printed)
    assert "Connected location" in err and "kept in the secrets file" in err
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    stored = secrets_file_values(secrets_file)
    secrets = {
        "client secret": oauth.client_secret,
        "access token": stored[f"{DEFAULT_LOCATION_ID}:access_token"],
        "refresh token": stored[f"{DEFAULT_LOCATION_ID}:refresh_token"],
    }
    assert stored[f"oauth-client:{oauth.client_id}"] == oauth.client_secret
    assert_absent(
        secrets,
        ("stdout", out),
        ("stderr", "".join(printed) + err),
        ("argv", cmdline),
        ("the database", database_bytes(cli.db)),
    )


def test_secrets_never_reach_log_records_output_or_the_database(
    oauth_cli: Cli,
    sandbox: Sandbox,
    oauth: OAuthApp,
    memory_keyring: MemoryKeyring,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cli = oauth_cli
    caplog.set_level(logging.DEBUG)
    sandbox.seed(4, seed=62)
    connected = connect_in_process(cli, oauth, monkeypatch)
    first = stored_pair(memory_keyring)
    oauth.provider.expire_access_tokens()
    synced = cli("--debug", "initial-sync", "--json")
    second = stored_pair(memory_keyring)
    oauth.provider.expire_access_tokens()
    oauth.sandbox.faults.set_rules([])
    memory_keyring.secrets[(SERVICE, f"{DEFAULT_LOCATION_ID}:refresh_token")] = first[
        "refresh_token"
    ]  # a spent refresh token: the failure path prints errors, and must not print secrets
    failed = cli("--debug", "reconcile")

    assert (connected.exit_code, synced.exit_code, failed.exit_code) == (0, 0, 77)
    assert oauth.provider.refresh_calls == 2
    assert any("refreshed the access token" in r.getMessage() for r in caplog.records)
    secrets = {
        "client secret": oauth.client_secret,
        "first access token": first["access_token"],
        "first refresh token": first["refresh_token"],
        "second access token": second["access_token"],
        "second refresh token": second["refresh_token"],
    }
    logged = "\n".join(f"{r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in caplog.records)
    assert_absent(
        secrets,
        ("log records", logged),
        ("connect output", connected.output),
        ("sync output", synced.output),
        ("error output", failed.output),
        ("the database", database_bytes(cli.db)),
    )


def test_a_forged_state_exits_65_and_stores_nothing(
    oauth_cli: Cli,
    sandbox: Sandbox,
    oauth: OAuthApp,
    memory_keyring: MemoryKeyring,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    browser = FakeBrowser(extra={"state": "forged-state"})

    result = connect_in_process(oauth_cli, oauth, monkeypatch, browser=browser)

    assert result.exit_code == 65, result.output
    assert "Error: The OAuth answer's state does not match this authorization attempt" in (
        result.stderr
    )
    assert "Hint: Run ghlsync connect --oauth again" in result.stderr
    assert memory_keyring.secrets == {}
    assert oauth.sandbox.stats.requests("POST /oauth/token authorization_code") == 0
    assert oauth_cli.json("status")["locations"] == []


def test_access_denied_in_ghl_exits_77(
    oauth_cli: Cli,
    sandbox: Sandbox,
    oauth: OAuthApp,
    memory_keyring: MemoryKeyring,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    browser = FakeBrowser(extra={"deny": "1"})

    result = connect_in_process(oauth_cli, oauth, monkeypatch, browser=browser)

    assert result.exit_code == 77, result.output
    assert "GHL did not authorize ghlsync (access_denied: The user denied access)." in (
        result.stderr
    )
    assert memory_keyring.secrets == {}


def test_no_client_secret_exits_78_before_the_browser_opens(
    oauth_cli: Cli, sandbox: Sandbox, oauth: OAuthApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    browser = FakeBrowser()
    monkeypatch.setattr("webbrowser.open", browser)

    result = oauth_cli(
        "connect",
        "--oauth",
        "--client-id",
        oauth.client_id,
        GHLSYNC_OAUTH_AUTHORIZE_URL=authorize_base(oauth_cli),
    )

    assert result.exit_code == 78, result.output
    assert f"Error: No client secret is stored for OAuth app {oauth.client_id}." in result.stderr
    assert "--client-secret-stdin" in result.stderr
    assert browser.urls == []


def test_no_keyring_exits_78_with_the_options_and_the_file_store_only_when_opted_in(
    oauth_cli: Cli,
    sandbox: Sandbox,
    oauth: OAuthApp,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    keyring.set_keyring(fail.Keyring())
    browser = FakeBrowser()
    before = sorted(tmp_path.rglob("*"))

    refused = connect_in_process(oauth_cli, oauth, monkeypatch, browser=browser)

    assert refused.exit_code == 78, refused.output
    assert "Error: No usable keyring backend on this machine" in refused.stderr
    for option in ("GHLSYNC_TOKEN", "LoadCredential=", "$CREDENTIALS_DIRECTORY/ghlsync-token"):
        assert option in refused.stderr
    assert "GHLSYNC_SECRETS_FILE=/path" in refused.stderr
    assert browser.urls == []  # nothing was authorized that could not be kept
    new_files = sorted(set(tmp_path.rglob("*")) - set(before))
    assert [p.name for p in new_files if p.suffix == ".json"] == []

    secrets_file = tmp_path / "opt-in" / "secrets.json"
    opted_in = connect_in_process(
        oauth_cli, oauth, monkeypatch, GHLSYNC_SECRETS_FILE=str(secrets_file)
    )

    assert opted_in.exit_code == 0, opted_in.output
    assert f"{DEFAULT_LOCATION_ID}:refresh_token" in secrets_file_values(secrets_file)
    status = oauth_cli.json("status", GHLSYNC_SECRETS_FILE=str(secrets_file))
    assert status["locations"][0]["token"]["source"] == "file"


def test_no_answer_from_the_browser_exits_75_after_the_timeout(
    oauth_cli: Cli, sandbox: Sandbox, oauth: OAuthApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    browser = FakeBrowser(does_nothing=True)

    result = connect_in_process(
        oauth_cli, oauth, monkeypatch, DEFAULT_LOCATION_ID, "--timeout", "1", browser=browser
    )

    assert result.exit_code == 75, result.output
    assert "Error: No answer from the browser within 1 s." in result.stderr


def test_a_location_other_than_the_one_asked_for_is_refused(
    oauth_cli: Cli,
    sandbox: Sandbox,
    oauth: OAuthApp,
    memory_keyring: MemoryKeyring,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    result = connect_in_process(
        oauth_cli, oauth, monkeypatch, DEFAULT_LOCATION_ID, "--location-id", SECOND_LOCATION
    )

    assert result.exit_code == 78, result.output
    assert f"GHL authorized location {DEFAULT_LOCATION_ID}, not {SECOND_LOCATION}." in (
        result.stderr
    )
    assert memory_keyring.secrets == {}


@pytest.mark.parametrize(
    "args",
    [
        ["--oauth"],
        ["--client-id", "app"],
        ["--oauth", "--client-id", "app", "--token-stdin"],
        [],
    ],
)
def test_inconsistent_connect_options_are_usage_errors(oauth_cli: Cli, args: list[str]) -> None:
    result = oauth_cli("connect", *args)

    assert result.exit_code == 2, result.output
    assert "Give --location-id" in result.stderr


def test_an_expired_token_is_refreshed_once_and_status_shows_the_new_expiry(
    oauth_cli: Cli,
    sandbox: Sandbox,
    oauth: OAuthApp,
    memory_keyring: MemoryKeyring,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cli = oauth_cli
    sandbox.seed(12, seed=63)
    oauth.provider.configure(access_token_ttl=3600)
    assert connect_in_process(cli, oauth, monkeypatch).exit_code == 0
    before = cli.json("status")["locations"][0]["token"]["expires_at"]
    oauth.provider.configure(access_token_ttl=7200)
    oauth.provider.expire_access_tokens()

    report = cli.json("initial-sync", GHLSYNC_PAGE_LIMIT="5")

    assert report["pull"]["created"] == 12
    assert oauth.provider.refresh_calls == 1
    assert oauth.provider.expired_token_uses == 1
    after = cli.json("status")["locations"][0]["token"]["expires_at"]
    assert after > before
    assert after == json.loads(stored_pair(memory_keyring)["oauth"])["expires_at"]


def test_several_oauth_locations_in_one_database(
    oauth_cli: Cli,
    sandbox: Sandbox,
    oauth: OAuthApp,
    memory_keyring: MemoryKeyring,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cli = oauth_cli
    sandbox.seed(3, seed=64)
    sandbox.add_location(SECOND_LOCATION)
    sandbox.seed(5, seed=65, location_id=SECOND_LOCATION)
    for location_id in (DEFAULT_LOCATION_ID, SECOND_LOCATION):
        assert connect_in_process(cli, oauth, monkeypatch, location_id).exit_code == 0
    oauth.provider.expire_access_tokens()

    reports = cli.json("reconcile", "--all")
    one = cli.json("--location", SECOND_LOCATION, "reconcile")

    assert [(r["location_id"], r["pull"]["created"]) for r in reports] == [
        (DEFAULT_LOCATION_ID, 3),
        (SECOND_LOCATION, 5),
    ]
    assert one["location_id"] == SECOND_LOCATION
    assert oauth.provider.refresh_calls == 2  # one per location
    first, second = stored_pair(memory_keyring), stored_pair(memory_keyring, SECOND_LOCATION)
    assert first["refresh_token"] != second["refresh_token"]
    kinds = {loc["location_id"]: loc["token"]["kind"] for loc in cli.json("status")["locations"]}
    assert kinds == {DEFAULT_LOCATION_ID: "oauth", SECOND_LOCATION: "oauth"}


def test_disconnect_forgets_access_and_refresh_tokens_and_keeps_contacts(
    oauth_cli: Cli,
    sandbox: Sandbox,
    oauth: OAuthApp,
    memory_keyring: MemoryKeyring,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cli = oauth_cli
    sandbox.seed(4, seed=66)
    assert connect_in_process(cli, oauth, monkeypatch).exit_code == 0
    cli.json("initial-sync")

    report = cli.json("disconnect")

    assert report == {"location_id": DEFAULT_LOCATION_ID, "secrets_removed": True}
    # The app's client secret stays for the next connect; the location's tokens are gone.
    assert memory_keyring.secrets == {
        (SERVICE, f"oauth-client:{oauth.client_id}"): oauth.client_secret
    }
    assert len(cli.json("contacts", "list")) == 4
    assert cli.json("status")["locations"][0]["connected"] is False


def test_ghlsync_token_bypasses_the_oauth_tokens(
    oauth_cli: Cli,
    sandbox: Sandbox,
    oauth: OAuthApp,
    memory_keyring: MemoryKeyring,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sandbox.seed(2, seed=67)
    assert connect_in_process(oauth_cli, oauth, monkeypatch).exit_code == 0
    oauth.provider.expire_access_tokens()

    report = oauth_cli.json("initial-sync", GHLSYNC_TOKEN="sandbox-token")

    assert report["pull"]["created"] == 2
    assert oauth.provider.refresh_calls == 0
    assert oauth.provider.expired_token_uses == 0
