"""The sandbox's OAuth endpoints answer like GHL's (oauth.json, oauth-v3.json): the choose-location
redirect, the token endpoint's grants and fields, single-use refresh tokens and expiring tokens."""

from __future__ import annotations

from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from ghlsync_cli.sandbox import DEFAULT_LOCATION_ID, FaultRule, SandboxServer
from ghlsync_cli.sandbox.oauth import REFRESH_ROUTE
from tests.auth.support import OAuthApp

REDIRECT_URI = "http://127.0.0.1:8765/callback"


def authorize_url(server: SandboxServer, app: OAuthApp, **extra: str) -> str:
    query = {
        "response_type": "code",
        "redirect_uri": REDIRECT_URI,
        "client_id": app.client_id,
        "scope": "contacts.readonly contacts.write",
        "state": "st4te",
        **extra,
    }
    return f"{server.url}/oauth/chooselocation?{urlencode(query)}"


def get_code(server: SandboxServer, app: OAuthApp, location_id: str = DEFAULT_LOCATION_ID) -> str:
    response = httpx.get(authorize_url(server, app, location_id=location_id))
    assert response.status_code == 302, response.text
    return parse_qs(urlsplit(response.headers["location"]).query)["code"][0]


def token_call(server: SandboxServer, app: OAuthApp, **form: str) -> httpx.Response:
    body = {"client_id": app.client_id, "client_secret": app.client_secret, **form}
    return httpx.post(f"{server.url}/oauth/token", data=body)


def exchange(server: SandboxServer, app: OAuthApp, code: str) -> dict[str, object]:
    response = token_call(
        server,
        app,
        grant_type="authorization_code",
        code=code,
        redirect_uri=REDIRECT_URI,
        user_type="Location",
    )
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def search(server: SandboxServer, token: object) -> httpx.Response:
    return httpx.post(
        f"{server.url}/contacts/search",
        json={"locationId": DEFAULT_LOCATION_ID, "pageLimit": 1},
        headers={"Authorization": f"Bearer {token}", "Version": "2021-07-28"},
    )


def test_choosing_a_location_redirects_to_the_app_with_code_and_state(
    sandbox_server: SandboxServer, oauth: OAuthApp
) -> None:
    response = httpx.get(authorize_url(sandbox_server, oauth, location_id=DEFAULT_LOCATION_ID))

    assert response.status_code == 302
    target = urlsplit(response.headers["location"])
    assert f"{target.scheme}://{target.netloc}{target.path}" == REDIRECT_URI
    query = parse_qs(target.query)
    assert query["state"] == ["st4te"]
    assert query["code"][0].startswith("sbx-code-")


def test_without_a_choice_the_page_lists_locations_and_deny_redirects_with_an_error(
    sandbox_server: SandboxServer, oauth: OAuthApp
) -> None:
    page = httpx.get(authorize_url(sandbox_server, oauth))
    denied = httpx.get(authorize_url(sandbox_server, oauth, deny="1"))
    unknown_app = httpx.get(authorize_url(sandbox_server, oauth, client_id="nope", location_id="x"))

    assert page.status_code == 200
    assert "Choose a location" in page.text
    assert f"location_id={DEFAULT_LOCATION_ID}" in page.text
    assert denied.status_code == 302
    assert parse_qs(urlsplit(denied.headers["location"]).query) == {
        "error": ["access_denied"],
        "error_description": ["The user denied access"],
        "state": ["st4te"],
    }
    assert unknown_app.status_code == 400


def test_auto_approve_needs_no_choice(sandbox_server: SandboxServer, oauth: OAuthApp) -> None:
    oauth.provider.configure(auto_approve_location=DEFAULT_LOCATION_ID)

    response = httpx.get(authorize_url(sandbox_server, oauth))

    assert response.status_code == 302
    assert "code=" in response.headers["location"]


def test_the_code_buys_a_working_token_pair_with_ghls_fields_once(
    sandbox_server: SandboxServer, oauth: OAuthApp
) -> None:
    code = get_code(sandbox_server, oauth)

    body = exchange(sandbox_server, oauth, code)
    again = token_call(
        sandbox_server, oauth, grant_type="authorization_code", code=code, redirect_uri=REDIRECT_URI
    )

    assert set(body) == {
        "access_token",
        "token_type",
        "expires_in",
        "refresh_token",
        "scope",
        "userType",
        "locationId",
        "companyId",
        "userId",
    }
    assert (body["token_type"], body["expires_in"], body["userType"]) == (
        "Bearer",
        86399,
        "Location",
    )
    assert body["locationId"] == DEFAULT_LOCATION_ID
    assert body["scope"] == "contacts.readonly contacts.write"
    assert search(sandbox_server, body["access_token"]).status_code == 200
    assert again.status_code == 400  # codes are single-use
    assert again.json()["error"] == "invalid_grant"


def test_refresh_tokens_rotate_and_a_reused_one_gets_ghls_invalid_grant(
    sandbox_server: SandboxServer, oauth: OAuthApp
) -> None:
    first = exchange(sandbox_server, oauth, get_code(sandbox_server, oauth))

    rotated = token_call(
        sandbox_server, oauth, grant_type="refresh_token", refresh_token=str(first["refresh_token"])
    )
    reused = token_call(
        sandbox_server, oauth, grant_type="refresh_token", refresh_token=str(first["refresh_token"])
    )

    assert rotated.status_code == 200
    second = rotated.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert search(sandbox_server, second["access_token"]).status_code == 200
    assert reused.status_code == 400
    # oauth-v3.json's wording, in GHL's {statusCode, message} and RFC 6749's {error, ...}.
    assert reused.json() == {
        "statusCode": 400,
        "message": "Invalid grant: refresh token is invalid",
        "error": "invalid_grant",
        "error_description": "Invalid grant: refresh token is invalid",
    }
    assert oauth.sandbox.stats.requests(REFRESH_ROUTE) == 2
    assert oauth.provider.refresh_calls == 2


def test_access_tokens_expire_after_their_ttl_and_then_get_401(
    sandbox_server: SandboxServer, oauth: OAuthApp
) -> None:
    now = [1_000_000.0]
    oauth.provider.clock = lambda: now[0]
    oauth.provider.configure(access_token_ttl=60)
    body = exchange(sandbox_server, oauth, get_code(sandbox_server, oauth))
    assert body["expires_in"] == 60

    now[0] += 59
    before = search(sandbox_server, body["access_token"])
    now[0] += 2
    after = search(sandbox_server, body["access_token"])

    assert before.status_code == 200
    assert after.status_code == 401
    assert after.json() == {"statusCode": 401, "message": "Invalid JWT", "error": "Unauthorized"}
    assert oauth.provider.expired_token_uses == 1


def test_a_paused_location_keeps_its_refresh_token(
    sandbox_server: SandboxServer, oauth: OAuthApp
) -> None:
    body = exchange(sandbox_server, oauth, get_code(sandbox_server, oauth))
    oauth.provider.set_location_active(DEFAULT_LOCATION_ID, False)

    paused = token_call(
        sandbox_server, oauth, grant_type="refresh_token", refresh_token=str(body["refresh_token"])
    )
    oauth.provider.set_location_active(DEFAULT_LOCATION_ID, True)
    resumed = token_call(
        sandbox_server, oauth, grant_type="refresh_token", refresh_token=str(body["refresh_token"])
    )

    assert paused.status_code == 400
    assert paused.json()["message"] == "Location is not active"
    assert resumed.status_code == 200


@pytest.mark.parametrize(
    ("form", "status", "message"),
    [
        ({"client_secret": "wrong-secret", "grant_type": "refresh_token"}, 401, "Invalid client"),
        ({"grant_type": "password"}, 400, "Invalid parameter: grant_type"),
        ({"grant_type": "refresh_token"}, 400, "Missing parameter: refresh_token"),
        ({"grant_type": "authorization_code", "user_type": "Company"}, 400, "user_type"),
        ({"client_id": ""}, 400, "Missing parameter: client_id"),
    ],
)
def test_bad_token_requests_get_ghls_errors(
    sandbox_server: SandboxServer,
    oauth: OAuthApp,
    form: dict[str, str],
    status: int,
    message: str,
) -> None:
    response = token_call(sandbox_server, oauth, **form)

    assert response.status_code == status, response.text
    assert message in response.json()["message"]


def test_the_token_endpoint_takes_forms_only_and_honours_fault_rules(
    sandbox_server: SandboxServer, oauth: OAuthApp
) -> None:
    as_json = httpx.post(
        f"{sandbox_server.url}/oauth/token",
        json={"client_id": oauth.client_id, "client_secret": oauth.client_secret},
    )
    oauth.sandbox.faults.set_rules([FaultRule(path_regex="^/oauth/token$", mode="status", count=1)])
    faulted = token_call(sandbox_server, oauth, grant_type="refresh_token", refresh_token="x")

    assert as_json.status_code == 422
    assert faulted.status_code == 503


def test_the_admin_route_configures_and_reports(
    sandbox_server: SandboxServer, oauth: OAuthApp
) -> None:
    body = exchange(sandbox_server, oauth, get_code(sandbox_server, oauth))

    configured = httpx.post(
        f"{sandbox_server.url}/_sandbox/oauth",
        json={"access_token_ttl": 120, "expire_access_tokens": True},
    )
    invalid = httpx.post(f"{sandbox_server.url}/_sandbox/oauth", json={"access_token_ttl": "x"})

    assert configured.status_code == 200
    assert configured.json()["access_token_ttl"] == 120
    assert configured.json()["live_access_tokens"] == 0
    assert search(sandbox_server, body["access_token"]).status_code == 401
    assert invalid.status_code == 400
