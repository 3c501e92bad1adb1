"""``ghlsync connect`` / ``disconnect`` and how every command finds its location.

The token is a secret: it may go to the keyring and nowhere else (not the database, not the
output). ``MemoryKeyring`` stands in for the OS keyring; keyring's ``fail`` backend stands in for a
headless machine that has none.
"""

from __future__ import annotations

import json
import secrets
import stat
from pathlib import Path

import keyring
import pytest
from keyring.backends import fail

from ghlsync_cli.sandbox import DEFAULT_LOCATION_ID, Sandbox
from tests.fakes import MemoryKeyring
from tests.helpers import Cli, contact_rows

SECOND_LOCATION = "secondLocation000002"
KEYRING_SERVICE = "ghlsync"


@pytest.fixture
def keyring_cli(cli: Cli) -> Cli:
    """The CLI with no GHLSYNC_TOKEN: tokens come from stdin and the keyring."""
    cli.token = None
    return cli


def fresh_token(sandbox: Sandbox, location_id: str = DEFAULT_LOCATION_ID) -> str:
    """A new, unguessable token the sandbox accepts for ``location_id``."""
    token = f"pit-{secrets.token_hex(16)}"
    sandbox.add_location(location_id, token)
    return token


def database_bytes(db: Path) -> bytes:
    """The database file and any WAL/journal beside it, as another program could read them."""
    return b"".join(p.read_bytes() for p in sorted(db.parent.glob(db.name + "*")))


def test_token_stdin_stores_the_token_in_the_keyring_only(
    keyring_cli: Cli, sandbox: Sandbox, memory_keyring: MemoryKeyring
) -> None:
    cli = keyring_cli
    sandbox.seed(7, seed=21)
    token = fresh_token(sandbox)
    piped = f"  {token}\n"  # a trailing newline (and stray spaces) as pasted or echoed

    result = cli("connect", "--location-id", DEFAULT_LOCATION_ID, "--token-stdin", input=piped)

    assert result.exit_code == 0, result.output
    assert memory_keyring.secrets == {
        (KEYRING_SERVICE, f"{DEFAULT_LOCATION_ID}:access_token"): token
    }
    assert f"Connected location {DEFAULT_LOCATION_ID} (7 contacts in GHL)" in result.stderr
    assert "the keyring" in result.stderr
    assert token not in result.stdout
    assert token not in result.stderr
    # Later commands find the token in the keyring.
    report = cli.json("initial-sync")
    assert report["pull"]["created"] == 7
    status = cli.json("status")["locations"][0]
    assert status["token"] == {"kind": "private", "source": "keyring", "expires_at": None}
    assert "private-integration token, from the keyring" in cli("status").stdout
    assert token.encode() not in database_bytes(cli.db)
    assert stat.S_IMODE(cli.db.stat().st_mode) == 0o600


def test_token_stdin_with_json_reports_without_the_token(
    keyring_cli: Cli, sandbox: Sandbox, memory_keyring: MemoryKeyring
) -> None:
    token = fresh_token(sandbox)

    result = keyring_cli(
        "connect", "--location-id", DEFAULT_LOCATION_ID, "--token-stdin", "--json", input=token
    )

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "location_id": DEFAULT_LOCATION_ID,
        "token": "private",
        "contacts_in_ghl": 0,
        "db": str(keyring_cli.db),
    }


def test_env_token_is_verified_and_recorded_without_the_keyring(
    cli: Cli, sandbox: Sandbox, memory_keyring: MemoryKeyring
) -> None:
    sandbox.seed(3, seed=22)
    older = {(KEYRING_SERVICE, f"{DEFAULT_LOCATION_ID}:access_token"): "an-older-token"}
    memory_keyring.secrets.update(older)
    before = sandbox.stats.snapshot()["total"]

    result = cli("connect", "--location-id", DEFAULT_LOCATION_ID)

    assert result.exit_code == 0, result.output
    assert "token from GHLSYNC_TOKEN (not stored)" in result.stderr
    assert sandbox.stats.snapshot()["total"] - before == 1  # verified with one API call
    assert memory_keyring.secrets == older  # untouched
    status = cli.json("status")
    assert [loc["location_id"] for loc in status["locations"]] == [DEFAULT_LOCATION_ID]
    assert status["locations"][0]["token"]["kind"] == "env"
    assert status["locations"][0]["token"]["source"] == "env"


def test_env_token_works_where_there_is_no_keyring(cli: Cli, sandbox: Sandbox) -> None:
    keyring.set_keyring(fail.Keyring())

    result = cli("connect", "--location-id", DEFAULT_LOCATION_ID)

    assert result.exit_code == 0, result.output
    assert cli.json("initial-sync")["pull"]["fetched"] == 0


def test_a_wrong_env_token_exits_77(cli: Cli, sandbox: Sandbox) -> None:
    result = cli("connect", "--location-id", DEFAULT_LOCATION_ID, GHLSYNC_TOKEN="wrong-token")

    assert result.exit_code == 77, result.output
    assert "Error: GHL rejected the access token" in result.stderr
    assert "Invalid JWT" in result.stderr
    assert "Hint: Run: ghlsync connect" in result.stderr
    assert cli.json("status")["locations"] == []


def test_a_wrong_stdin_token_exits_77_and_is_not_stored(
    keyring_cli: Cli, sandbox: Sandbox, memory_keyring: MemoryKeyring
) -> None:
    wrong = f"pit-{secrets.token_hex(16)}"

    result = keyring_cli(
        "connect", "--location-id", DEFAULT_LOCATION_ID, "--token-stdin", input=wrong
    )

    assert result.exit_code == 77, result.output
    assert memory_keyring.secrets == {}
    assert wrong not in result.stderr
    assert keyring_cli.json("status")["locations"] == []


def test_an_unknown_location_exits_78_with_ghls_message(cli: Cli, sandbox: Sandbox) -> None:
    result = cli("connect", "--location-id", "noSuchLocation000001")

    assert result.exit_code == 78, result.output
    assert "Error: GHL refused access (403 on POST /contacts/search)" in result.stderr
    assert "The token does not have access to this location." in result.stderr
    assert "Hint: Check that the token belongs to location noSuchLocation000001" in result.stderr
    assert cli.json("status")["locations"] == []


def test_no_keyring_backend_with_token_stdin_exits_78_naming_ghlsync_token(
    keyring_cli: Cli, sandbox: Sandbox
) -> None:
    keyring.set_keyring(fail.Keyring())
    token = fresh_token(sandbox)

    result = keyring_cli(
        "connect", "--location-id", DEFAULT_LOCATION_ID, "--token-stdin", input=token
    )

    assert result.exit_code == 78, result.output
    assert "Error: No usable keyring backend" in result.stderr
    assert "Hint: Set GHLSYNC_TOKEN" in result.stderr
    assert token not in result.output
    assert keyring_cli.json("status")["locations"] == []
    assert token.encode() not in database_bytes(keyring_cli.db)


def test_no_token_at_all_exits_78(keyring_cli: Cli, sandbox: Sandbox) -> None:
    before = sandbox.stats.snapshot()["total"]

    result = keyring_cli("connect", "--location-id", DEFAULT_LOCATION_ID)

    assert result.exit_code == 78, result.output
    assert "Error: No token given." in result.stderr
    assert "--token-stdin" in result.stderr
    assert "GHLSYNC_TOKEN" in result.stderr
    assert sandbox.stats.snapshot()["total"] == before  # nothing was sent


def test_token_stdin_with_nothing_on_stdin_exits_65(
    keyring_cli: Cli, sandbox: Sandbox, memory_keyring: MemoryKeyring
) -> None:
    result = keyring_cli("connect", "--location-id", DEFAULT_LOCATION_ID, "--token-stdin", input="")

    assert result.exit_code == 65, result.output
    assert "Error: No private-integration token on stdin." in result.stderr
    assert memory_keyring.secrets == {}


def test_status_after_connect_shows_the_location(cli: Cli, sandbox: Sandbox) -> None:
    assert cli.json("status")["locations"] == []
    cli.connect()

    status = cli.json("status")

    assert status["db"] == str(cli.db)
    (location,) = status["locations"]
    assert location["location_id"] == DEFAULT_LOCATION_ID
    assert location["connected"] is True
    assert location["connected_at"].endswith("Z")
    assert location["contacts"] == {"active": 0, "inactive": 0, "deleted": 0}
    assert location["cursor"]["initial_sync_complete"] is False


def test_disconnect_keeps_contacts_and_removes_secrets(
    keyring_cli: Cli, sandbox: Sandbox, memory_keyring: MemoryKeyring
) -> None:
    cli = keyring_cli
    sandbox.seed(12, seed=23)
    token = fresh_token(sandbox)
    connected = cli("connect", "--location-id", DEFAULT_LOCATION_ID, "--token-stdin", input=token)
    assert connected.exit_code == 0, connected.output
    cli.json("initial-sync")
    assert memory_keyring.secrets

    report = cli.json("disconnect")

    assert report == {"location_id": DEFAULT_LOCATION_ID, "secrets_removed": True}
    assert memory_keyring.secrets == {}
    assert len(cli.json("contacts", "list")) == 12
    (location,) = cli.json("status")["locations"]
    assert location["connected"] is False
    assert location["contacts"]["active"] == 12
    # Nothing is connected any more: syncing needs a connect first.
    again = cli("initial-sync")
    assert again.exit_code == 78, again.output
    assert "No location is connected" in again.stderr


def test_disconnect_says_so_in_words(cli: Cli, sandbox: Sandbox) -> None:
    cli.connect()

    result = cli("disconnect")

    assert result.exit_code == 0, result.output
    assert f"Disconnected {DEFAULT_LOCATION_ID}; its contacts are kept." in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    "command",
    [
        ["initial-sync"],
        ["reconcile"],
        ["push", "--pending"],
        ["disconnect"],
        ["contacts", "add", "--first-name", "Mary"],
    ],
)
def test_commands_that_need_a_location_exit_78_when_none_is_connected(
    cli: Cli, sandbox: Sandbox, command: list[str]
) -> None:
    result = cli(*command)

    assert result.exit_code == 78, result.output
    assert "Error: No location is connected." in result.stderr
    assert "Hint: Run: ghlsync connect --location-id ID --token-stdin" in result.stderr


def test_two_connected_locations_need_location(
    keyring_cli: Cli, sandbox: Sandbox, memory_keyring: MemoryKeyring
) -> None:
    cli = keyring_cli
    sandbox.seed(4, seed=24)
    sandbox.add_location(SECOND_LOCATION)
    sandbox.seed(6, seed=25, location_id=SECOND_LOCATION)
    for location_id in (DEFAULT_LOCATION_ID, SECOND_LOCATION):
        token = fresh_token(sandbox, location_id)
        result = cli("connect", "--location-id", location_id, "--token-stdin", input=token)
        assert result.exit_code == 0, result.output
    assert len(memory_keyring.secrets) == 2

    result = cli("initial-sync")

    assert result.exit_code == 78, result.output
    assert (
        f"Error: Several locations are connected ({DEFAULT_LOCATION_ID}, {SECOND_LOCATION})."
        in result.stderr
    )
    assert "Hint: Choose one with --location ID or GHLSYNC_LOCATION." in result.stderr
    # Naming one works, each with its own token from the keyring.
    second = cli.json("--location", SECOND_LOCATION, "initial-sync")
    assert (second["location_id"], second["pull"]["created"]) == (SECOND_LOCATION, 6)
    first = cli.json("initial-sync", GHLSYNC_LOCATION=DEFAULT_LOCATION_ID)
    assert (first["location_id"], first["pull"]["created"]) == (DEFAULT_LOCATION_ID, 4)
    locations = {loc["location_id"]: loc for loc in cli.json("status")["locations"]}
    assert locations[SECOND_LOCATION]["contacts"]["active"] == 6
    assert locations[DEFAULT_LOCATION_ID]["contacts"]["active"] == 4


@pytest.mark.parametrize("history", ["never-connected", "disconnected"])
def test_a_named_location_that_is_not_connected_exits_78(
    cli: Cli, sandbox: Sandbox, history: str
) -> None:
    token = fresh_token(sandbox, SECOND_LOCATION)
    sandbox.seed(5, seed=26, location_id=SECOND_LOCATION)
    cli.connect()
    if history == "disconnected":
        connected = cli("connect", "--location-id", SECOND_LOCATION, GHLSYNC_TOKEN=token)
        assert connected.exit_code == 0, connected.output
        gone = cli("--location", SECOND_LOCATION, "disconnect")
        assert gone.exit_code == 0, gone.output

    results = {
        command: cli("--location", SECOND_LOCATION, command, GHLSYNC_TOKEN=token)
        for command in ("initial-sync", "reconcile")
    }

    # GHLSYNC_TOKEN opens the location in GHL, but it is not connected here: syncing it would
    # fill the database with contacts that status and reconcile --all never show.
    assert {c: r.exit_code for c, r in results.items()} == {"initial-sync": 78, "reconcile": 78}
    for result in results.values():
        assert f"{SECOND_LOCATION} is not connected" in result.stderr
        assert "ghlsync connect" in result.stderr
    assert [r for r in contact_rows(cli.db) if r["location_id"] == SECOND_LOCATION] == []
