"""OAuthAuth against the sandbox on loopback: refresh before expiry and once after a 401, under a
lock, re-reading the stored pair first; a spent refresh token is exit 77 — never a loop."""

from __future__ import annotations

import dataclasses
import traceback
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from ghlsync_cli.auth import OAuthAuth, OAuthTokens, TokenStore, exchange_code
from ghlsync_cli.errors import AuthError, TryAgainError, UnavailableError
from ghlsync_cli.ghl.client import GHLClient, RetryPolicy, build_http_client
from ghlsync_cli.sandbox import DEFAULT_LOCATION_ID, FaultRule, SandboxServer
from ghlsync_cli.store import Store
from ghlsync_cli.sync.engine import SyncEngine
from tests.auth.support import OAuthApp

REDIRECT_URI = "http://127.0.0.1:8765/callback"
SEARCH = "POST /contacts/search"


def connect_pair(server: SandboxServer, app: OAuthApp, tokens: TokenStore) -> OAuthTokens:
    """What ``connect --oauth`` leaves behind: a stored pair and the app's secret."""
    code = app.provider.authorize(
        client_id=app.client_id, redirect_uri=REDIRECT_URI, location_id=DEFAULT_LOCATION_ID
    )
    with httpx.Client() as http:
        pair = exchange_code(
            http,
            token_url=f"{server.url}/oauth/token",
            client_id=app.client_id,
            client_secret=app.client_secret,
            code=code,
            redirect_uri=REDIRECT_URI,
        )
    tokens.save_oauth(DEFAULT_LOCATION_ID, pair)
    tokens.save_client_secret(app.client_id, app.client_secret)
    return pair


def oauth_client(
    server: SandboxServer,
    tokens: TokenStore,
    refreshed: list[OAuthTokens] | None = None,
    on_response: Callable[[httpx.Response], None] | None = None,
) -> tuple[GHLClient, OAuthAuth]:
    auth = OAuthAuth(
        location_id=DEFAULT_LOCATION_ID,
        tokens=tokens,
        token_url=f"{server.url}/oauth/token",
        on_refresh=None if refreshed is None else refreshed.append,
    )
    http = build_http_client(server.url, auth=auth, timeout=10)
    if on_response is not None:
        http.event_hooks = {"response": [on_response]}
    client = GHLClient(
        http,
        location_id=DEFAULT_LOCATION_ID,
        retry=RetryPolicy(attempts=2, wait_initial=0.01, wait_max=0.01, wait_jitter=0.0),
    )
    return client, auth


def test_a_token_near_expiry_is_refreshed_before_it_is_used(
    sandbox_server: SandboxServer, oauth: OAuthApp
) -> None:
    tokens = TokenStore()
    pair = connect_pair(sandbox_server, oauth, tokens)
    soon = datetime.now(UTC) + timedelta(seconds=60)  # inside the 5-minute margin
    tokens.save_oauth(DEFAULT_LOCATION_ID, dataclasses.replace(pair, expires_at=soon))
    refreshed: list[OAuthTokens] = []
    client, auth = oauth_client(sandbox_server, tokens, refreshed)

    with client:
        client.verify()
        client.verify()

    stored = tokens.load_oauth(DEFAULT_LOCATION_ID)
    assert stored is not None
    assert oauth.provider.refresh_calls == 1
    assert oauth.provider.expired_token_uses == 0  # refreshed before, not after, a 401
    assert auth.refresh_count == 1
    assert refreshed == [stored]
    assert stored.refresh_token != pair.refresh_token
    assert stored.expires_at > soon + timedelta(hours=23)


def test_token_expiry_mid_sync_refreshes_exactly_once_and_the_sync_finishes(
    tmp_path: Path, sandbox_server: SandboxServer, oauth: OAuthApp
) -> None:
    oauth.sandbox.seed(30, seed=41)
    tokens = TokenStore()
    connect_pair(sandbox_server, oauth, tokens)
    expired: list[int] = []
    pages_served: list[httpx.Response] = []

    def after_response(response: httpx.Response) -> None:
        # Pages are fetched ahead of the merging, so expiry is tied to the pages fetched (two),
        # not to the contacts merged: GHL's clock passes expiry before the third page's request.
        if response.request.url.path == "/contacts/search" and response.status_code == 200:
            pages_served.append(response)
            if len(pages_served) == 2:
                expired.append(oauth.provider.expire_access_tokens())

    client, auth = oauth_client(sandbox_server, tokens, on_response=after_response)
    store = Store.open(tmp_path / "ghlsync.db")
    with store.write():
        store.save_location(DEFAULT_LOCATION_ID, token_kind="oauth", now="2025-01-01T00:00:00.000Z")

    with client:
        report = SyncEngine(store, client, location_id=DEFAULT_LOCATION_ID).initial_sync(
            page_limit=5
        )
    store.close()

    assert expired == [1]
    assert report.pull.created == 30
    assert oauth.provider.expired_token_uses == 1
    assert oauth.provider.refresh_calls == 1
    assert auth.refresh_count == 1
    assert oauth.sandbox.stats.requests(SEARCH) == 8  # 7 pages (the last one empty) + 1 retried


def test_a_spent_refresh_token_is_exit_77_with_a_hint_and_no_loop(
    sandbox_server: SandboxServer, oauth: OAuthApp
) -> None:
    tokens = TokenStore()
    pair = connect_pair(sandbox_server, oauth, tokens)
    spent = httpx.post(
        f"{sandbox_server.url}/oauth/token",
        data={
            "client_id": oauth.client_id,
            "client_secret": oauth.client_secret,
            "grant_type": "refresh_token",
            "refresh_token": pair.refresh_token,
        },
    )
    assert spent.status_code == 200  # someone used it and threw the new pair away
    oauth.provider.expire_access_tokens()
    client, _ = oauth_client(sandbox_server, tokens)

    with client, pytest.raises(AuthError) as caught:
        client.verify()

    error = caught.value
    assert error.exit_code == 77
    assert "GHL refused to refresh the access token (400)" in error.message
    assert "Invalid grant: refresh token is invalid" in error.message
    assert error.hint is not None
    assert "run ghlsync connect again" in error.hint
    assert f"--client-id {oauth.client_id}" in error.hint
    assert oauth.provider.refresh_calls == 2  # the spender's and ours: one try, no loop
    assert oauth.sandbox.stats.requests(SEARCH) == 1
    printed = "".join(traceback.format_exception(error))
    for secret in (pair.refresh_token, pair.access_token, oauth.client_secret):
        assert secret not in printed


@pytest.mark.parametrize("is_due", [False, True], ids=["after-401", "before-expiry"])
def test_a_401_right_after_a_refresh_is_an_auth_error(
    sandbox_server: SandboxServer, oauth: OAuthApp, is_due: bool
) -> None:
    tokens = TokenStore()
    pair = connect_pair(sandbox_server, oauth, tokens)
    if is_due:
        past = datetime.now(UTC) - timedelta(seconds=1)
        tokens.save_oauth(DEFAULT_LOCATION_ID, dataclasses.replace(pair, expires_at=past))
    oauth.sandbox.faults.set_rules(
        [FaultRule(path_regex="^/contacts/search$", mode="unauthorized")]
    )
    client, _ = oauth_client(sandbox_server, tokens)

    with client, pytest.raises(AuthError) as caught:
        client.verify()

    assert caught.value.exit_code == 77
    assert "right after it was refreshed" in caught.value.message
    assert oauth.provider.refresh_calls == 1
    assert oauth.sandbox.stats.requests(SEARCH) == (1 if is_due else 2)


def test_a_pair_another_client_stored_is_used_without_refreshing(
    sandbox_server: SandboxServer, oauth: OAuthApp
) -> None:
    tokens = TokenStore()
    connect_pair(sandbox_server, oauth, tokens)
    first, first_auth = oauth_client(sandbox_server, tokens)
    second, second_auth = oauth_client(sandbox_server, tokens)
    with first, second:
        first.verify()
        second.verify()  # both now hold the same access token in memory
        oauth.provider.expire_access_tokens()

        first.verify()  # 401 → refresh → new pair stored
        second.verify()  # 401 → lock → the stored pair is newer → use it

    assert (first_auth.refresh_count, second_auth.refresh_count) == (1, 0)
    assert oauth.provider.refresh_calls == 1
    assert oauth.provider.expired_token_uses == 2


def test_a_paused_location_is_exit_75_and_keeps_the_refresh_token(
    sandbox_server: SandboxServer, oauth: OAuthApp
) -> None:
    tokens = TokenStore()
    pair = connect_pair(sandbox_server, oauth, tokens)
    oauth.provider.expire_access_tokens()
    oauth.provider.set_location_active(DEFAULT_LOCATION_ID, False)
    client, _ = oauth_client(sandbox_server, tokens)

    with client:
        with pytest.raises(TryAgainError) as caught:
            client.verify()
        oauth.provider.set_location_active(DEFAULT_LOCATION_ID, True)
        client.verify()

    assert caught.value.exit_code == 75
    assert "Location is not active" in caught.value.message
    assert caught.value.hint is not None and "no reconnect is needed" in caught.value.hint
    assert oauth.provider.refresh_calls == 2
    stored = tokens.load_oauth(DEFAULT_LOCATION_ID)
    assert stored is not None and stored.refresh_token != pair.refresh_token


def test_an_unavailable_token_endpoint_is_exit_69_and_keeps_the_pair(
    sandbox_server: SandboxServer, oauth: OAuthApp
) -> None:
    tokens = TokenStore()
    pair = connect_pair(sandbox_server, oauth, tokens)
    oauth.provider.expire_access_tokens()
    oauth.sandbox.faults.set_rules([FaultRule(path_regex="^/oauth/token$", mode="status")])
    client, _ = oauth_client(sandbox_server, tokens)

    with client, pytest.raises(UnavailableError) as caught:
        client.verify()

    assert caught.value.exit_code == 69
    assert "GHL's token endpoint could not refresh the access token (503)" in caught.value.message
    assert tokens.load_oauth(DEFAULT_LOCATION_ID) == pair


def test_nothing_stored_or_no_client_secret_is_exit_77(
    sandbox_server: SandboxServer, oauth: OAuthApp
) -> None:
    tokens = TokenStore()
    client, _ = oauth_client(sandbox_server, tokens)
    with client, pytest.raises(AuthError) as nothing:
        client.verify()
    connect_pair(sandbox_server, oauth, tokens)
    tokens.secrets.delete_many([f"oauth-client:{oauth.client_id}"])
    oauth.provider.expire_access_tokens()
    client, _ = oauth_client(sandbox_server, tokens)

    with client, pytest.raises(AuthError) as no_secret:
        client.verify()

    assert (
        nothing.value.message == f"No OAuth tokens are stored for location {DEFAULT_LOCATION_ID}."
    )
    assert "client secret of OAuth app" in no_secret.value.message
    assert no_secret.value.hint is not None
    assert "--client-secret-stdin" in no_secret.value.hint
    assert oauth.provider.refresh_calls == 0
