"""Where secrets live: the OS keyring, or — only when opted in — a 0600 file written atomically.

A headless server with no keyring gets exit 78 and the three ways out (GHLSYNC_TOKEN, systemd
credentials, the opt-in file); ghlsync never falls back to plaintext on its own.
"""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import keyring
import pytest
from keyring.backends import fail

from ghlsync_cli.auth import FileSecrets, OAuthTokens, TokenStore
from ghlsync_cli.errors import ConfigError, NoKeyringError
from tests.fakes import MemoryKeyring

LOCATION = "locSecrets0000000001"


def tokens(access: str = "access-canary-0001", refresh: str = "refresh-canary-0001") -> OAuthTokens:
    return OAuthTokens(
        access_token=access,
        refresh_token=refresh,
        expires_at=datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC),
        expires_in=86399,
        client_id="app-1",
        location_id=LOCATION,
        scope="contacts.readonly contacts.write",
    )


def test_the_file_store_is_0600_atomic_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "private" / "secrets.json"
    store = TokenStore(secrets_file=path)

    store.save_oauth(LOCATION, tokens())
    store.save_client_secret("app-1", "client-canary-0001")
    store.save_oauth(LOCATION, tokens("access-canary-0002", "refresh-canary-0002"))

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == [".secrets.json.lock", "secrets.json"]
    document = json.loads(path.read_text())
    assert document["version"] == 1
    assert document["secrets"]["ghlsync"]["oauth-client:app-1"] == "client-canary-0001"
    loaded = TokenStore(secrets_file=path).load_oauth(LOCATION)
    assert loaded == tokens("access-canary-0002", "refresh-canary-0002")
    assert store.source(LOCATION) == "file"


def test_the_file_store_refuses_a_file_others_can_read(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    TokenStore(secrets_file=path).save_client_secret("app-1", "client-canary-0001")
    os.chmod(path, 0o644)

    with pytest.raises(ConfigError) as caught:
        TokenStore(secrets_file=path).client_secret("app-1")

    assert caught.value.exit_code == 78
    assert "readable by other users (mode 644)" in caught.value.message
    assert caught.value.hint == f"Run: chmod 600 {path}"


def test_a_file_that_is_not_a_secrets_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    path.write_text("not json")
    path.chmod(0o600)

    with pytest.raises(ConfigError, match="is not a ghlsync secrets file"):
        FileSecrets(path).check()


def test_no_keyring_is_exit_78_listing_the_three_options_and_writes_nothing(
    tmp_path: Path,
) -> None:
    keyring.set_keyring(fail.Keyring())
    before = sorted(tmp_path.rglob("*"))
    store = TokenStore()

    with pytest.raises(NoKeyringError) as caught:
        store.check_writable()
    with pytest.raises(NoKeyringError):
        store.save_oauth(LOCATION, tokens())

    error = caught.value
    assert error.exit_code == 78
    assert error.message == "No usable keyring backend on this machine (Keyring)."
    assert error.hint is not None
    for option in (
        "GHLSYNC_TOKEN",
        "LoadCredential=ghlsync-token:/path",
        "$CREDENTIALS_DIRECTORY/ghlsync-token",
        "GHLSYNC_SECRETS_FILE=/path",
    ):
        assert option in error.hint
    assert sorted(tmp_path.rglob("*")) == before  # no plaintext fallback appeared anywhere


def test_the_keyring_is_used_unless_a_file_is_configured(
    tmp_path: Path, memory_keyring: MemoryKeyring
) -> None:
    store = TokenStore()

    store.save_oauth(LOCATION, tokens())

    assert memory_keyring.secrets[("ghlsync", f"{LOCATION}:access_token")] == "access-canary-0001"
    assert memory_keyring.secrets[("ghlsync", f"{LOCATION}:refresh_token")] == "refresh-canary-0001"
    meta = json.loads(memory_keyring.secrets[("ghlsync", f"{LOCATION}:oauth")])
    assert meta == {
        "client_id": "app-1",
        "expires_at": "2030-01-02T03:04:05.000Z",
        "expires_in": 86399,
        "scope": "contacts.readonly contacts.write",
    }
    assert store.source(LOCATION) == "keyring"
    assert not list(tmp_path.rglob("*.json"))


def test_delete_forgets_the_locations_tokens_but_not_the_apps_secret(
    memory_keyring: MemoryKeyring,
) -> None:
    store = TokenStore()
    store.save_oauth(LOCATION, tokens())
    store.save_client_secret("app-1", "client-canary-0001")

    assert store.delete(LOCATION) is True
    assert store.delete(LOCATION) is False

    assert memory_keyring.secrets == {("ghlsync", "oauth-client:app-1"): "client-canary-0001"}
    assert store.load_oauth(LOCATION) is None


def test_static_tokens_override_stored_ones(tmp_path: Path, memory_keyring: MemoryKeyring) -> None:
    credentials = tmp_path / "creds"
    credentials.mkdir()
    (credentials / "ghlsync-token").write_text("credential-token\n")
    store = TokenStore(environ={"CREDENTIALS_DIRECTORY": str(credentials)})
    both = TokenStore(
        environ={"CREDENTIALS_DIRECTORY": str(credentials), "GHLSYNC_TOKEN": "env-token"}
    )

    assert (store.static_token(), store.source(LOCATION)) == ("credential-token", "credential")
    assert (both.static_token(), both.source(LOCATION)) == ("env-token", "env")


def test_token_pairs_keep_their_secrets_out_of_repr() -> None:
    text = repr(tokens())

    assert "canary" not in text
    assert "app-1" in text
