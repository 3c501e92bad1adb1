"""GHL's OAuth 2.0 in the sandbox: the choose-location page and ``POST /oauth/token``.

The authorization-code flow as GHL runs it (spec: ``oauth.json``): the app sends the user to
``/oauth/chooselocation?response_type=code&client_id=…&redirect_uri=…&scope=…&state=…``; once a
location is chosen, the page redirects (302) to ``redirect_uri?code=…&state=…``; the app trades the
code at the token endpoint (form-encoded ``grant_type=authorization_code``) for an access token,
a refresh token and ``expires_in``, and later trades the refresh token (``grant_type=
refresh_token``) for a new pair. What clients must survive, the sandbox does too:

- refresh tokens are single-use: a reused one gets 400 ``Invalid grant: refresh token is invalid``
  (the wording of ``oauth-v3.json``), with RFC 6749's ``error: invalid_grant`` beside GHL's
  ``statusCode``/``message``;
- a paused location gets 400 ``Location is not active`` and its refresh token stays valid;
- access tokens expire after ``access_token_ttl`` seconds and then get 401 on every API route;
- every token call is counted in the sandbox stats, by grant (``REFRESH_ROUTE`` for refreshes).

A browser is not needed: ``?location_id=…`` on the choose-location URL (or the provider's
``auto_approve_location``) chooses the location and redirects at once, so a test follows the
redirect with httpx; without one the page lists the locations as links, for a person with a real
browser (``make demo``). ``?deny=1`` redirects with ``error=access_denied`` instead.
"""

from __future__ import annotations

import html
import secrets
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ghlsync_cli.sandbox.clock import Clock
from ghlsync_cli.sandbox.errors import SandboxApiError, bad_request
from ghlsync_cli.sandbox.fault_effects import early_fault_response
from ghlsync_cli.sandbox.responses import error_response, json_response, read_json_object
from ghlsync_cli.sandbox.state import Sandbox

DEFAULT_CLIENT_ID = "sandbox-oauth-client"
DEFAULT_CLIENT_SECRET = "sandbox-oauth-client-secret"
DEFAULT_COMPANY_ID = "sandboxCompany000001"
DEFAULT_USER_ID = "sandboxUser000000001"
DEFAULT_SCOPE = "contacts.readonly contacts.write"
DEFAULT_ACCESS_TOKEN_TTL = 86399  # seconds, as GHL issues them
CODE_TTL = 600  # seconds an authorization code stays valid

AUTHORIZE_PATH = "/oauth/chooselocation"
TOKEN_PATH = "/oauth/token"
#: Stats templates: every token call is counted under its grant type.
TOKEN_ROUTE = "POST /oauth/token"
AUTHORIZATION_CODE_ROUTE = f"{TOKEN_ROUTE} authorization_code"
REFRESH_ROUTE = f"{TOKEN_ROUTE} refresh_token"

INVALID_GRANT = "Invalid grant: refresh token is invalid"
INVALID_CODE = "Invalid grant: authorization code is invalid"
LOCATION_NOT_ACTIVE = "Location is not active"


@dataclass(frozen=True)
class OAuthClientApp:
    """A marketplace app: its credentials and (optionally) the redirect URIs it registered."""

    client_id: str
    client_secret: str
    redirect_uris: tuple[str, ...] | None = None  # None: any loopback URI (a sandbox comfort)


@dataclass
class _Grant:
    """What a code or a refresh token stands for."""

    client_id: str
    location_id: str
    scope: str
    redirect_uri: str = ""
    expires_at: float | None = None
    is_used: bool = False


@dataclass
class _AccessToken:
    location_id: str
    expires_at: float


class OAuthError(Exception):
    """A token-endpoint error answer: status plus body (GHL's fields and RFC 6749's)."""

    def __init__(self, status: int, message: str, error: str) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {
            "statusCode": status,
            "message": message,
            "error": error,
            "error_description": message,
        }


_providers: weakref.WeakKeyDictionary[Sandbox, OAuthProvider] = weakref.WeakKeyDictionary()
_providers_lock = threading.Lock()


class OAuthProvider:
    """The OAuth side of one sandbox: apps, codes, refresh tokens and access-token expiry.

    Access tokens it mints are issued through ``Sandbox.add_token``, so every API route accepts
    them; when they expire they are revoked there, and the API answers 401 like GHL.
    """

    def __init__(self, sandbox: Sandbox, *, clock: Clock = time.time) -> None:
        self.sandbox = sandbox
        self.clock = clock
        self._lock = threading.RLock()
        self.access_token_ttl: float = DEFAULT_ACCESS_TOKEN_TTL
        self.auto_approve_location: str | None = None
        self._clients: dict[str, OAuthClientApp] = {}
        self._codes: dict[str, _Grant] = {}
        self._refresh_tokens: dict[str, _Grant] = {}
        self._access: dict[str, _AccessToken] = {}
        self._expired: set[str] = set()
        self._inactive: set[str] = set()
        self.expired_token_uses = 0
        self.register_client(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET)

    @classmethod
    def for_sandbox(cls, sandbox: Sandbox) -> OAuthProvider:
        """The provider of ``sandbox`` (one per sandbox, created on first use)."""
        with _providers_lock:
            provider = _providers.get(sandbox)
            if provider is None:
                provider = _providers[sandbox] = cls(sandbox)
            return provider

    # -- set-up, for tests and demos ----------------------------------------------------------

    def register_client(
        self, client_id: str, client_secret: str, *, redirect_uris: tuple[str, ...] | None = None
    ) -> OAuthClientApp:
        """Register (or replace) a marketplace app."""
        app = OAuthClientApp(client_id, client_secret, redirect_uris)
        with self._lock:
            self._clients[client_id] = app
        return app

    def set_location_active(self, location_id: str, active: bool) -> None:
        """Pause or resume a location (its refresh then gets ``Location is not active``)."""
        with self._lock:
            if active:
                self._inactive.discard(location_id)
            else:
                self._inactive.add(location_id)

    def expire_access_tokens(self, location_id: str | None = None) -> int:
        """Let every live access token (of one location) expire now; returns how many."""
        with self._lock:
            now = self.clock()
            chosen = [
                token
                for token, access in self._access.items()
                if location_id is None or access.location_id == location_id
            ]
            for token in chosen:
                self._access[token].expires_at = now
            self.expire_due()
            return len(chosen)

    def reset(self) -> None:
        """Forget codes, tokens (revoking them), apps and settings; counters back to zero."""
        with self._lock:
            for token in self._access:
                self.sandbox.revoke_token(token)
            self._codes.clear()
            self._refresh_tokens.clear()
            self._access.clear()
            self._expired.clear()
            self._inactive.clear()
            self._clients.clear()
            self.access_token_ttl = DEFAULT_ACCESS_TOKEN_TTL
            self.auto_approve_location = None
            self.expired_token_uses = 0
            self.register_client(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET)

    @property
    def refresh_calls(self) -> int:
        """How many ``grant_type=refresh_token`` calls reached the token endpoint."""
        return self.sandbox.stats.requests(REFRESH_ROUTE)

    def snapshot(self) -> dict[str, Any]:
        """Settings and counters (no secrets)."""
        with self._lock:
            return {
                "access_token_ttl": self.access_token_ttl,
                "auto_approve_location": self.auto_approve_location,
                "clients": sorted(self._clients),
                "live_access_tokens": len(self._access),
                "refresh_calls": self.refresh_calls,
                "authorization_code_calls": self.sandbox.stats.requests(AUTHORIZATION_CODE_ROUTE),
                "expired_token_uses": self.expired_token_uses,
                "inactive_locations": sorted(self._inactive),
            }

    def configure(
        self,
        *,
        access_token_ttl: float | None = None,
        auto_approve_location: str | None = None,
    ) -> None:
        """Change the access-token lifetime and/or the location chosen without asking."""
        with self._lock:
            if access_token_ttl is not None:
                self.access_token_ttl = access_token_ttl
            if auto_approve_location is not None:
                self.auto_approve_location = auto_approve_location or None

    # -- the flow -----------------------------------------------------------------------------

    def check_client(self, client_id: str, redirect_uri: str) -> OAuthClientApp:
        """The registered app, if ``redirect_uri`` is acceptable for it; else ``OAuthError``."""
        with self._lock:
            app = self._clients.get(client_id)
        if app is None:
            raise OAuthError(400, "Invalid parameter: client_id", "invalid_client")
        parts = urlsplit(redirect_uri)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise OAuthError(400, "Invalid parameter: redirect_uri", "invalid_request")
        if app.redirect_uris is not None and redirect_uri not in app.redirect_uris:
            raise OAuthError(400, "redirect_uri is not registered for this app", "invalid_request")
        return app

    def authorize(
        self, *, client_id: str, redirect_uri: str, location_id: str, scope: str = DEFAULT_SCOPE
    ) -> str:
        """A fresh authorization code for ``location_id`` (what choosing a location yields)."""
        with self._lock:
            self.check_client(client_id, redirect_uri)
            if location_id not in self.sandbox.location_ids():
                raise OAuthError(400, f"Unknown location {location_id!r}", "invalid_request")
            code = f"sbx-code-{secrets.token_hex(16)}"
            self._codes[code] = _Grant(
                client_id=client_id,
                location_id=location_id,
                scope=scope,
                redirect_uri=redirect_uri,
                expires_at=self.clock() + CODE_TTL,
            )
            return code

    def token(self, form: Mapping[str, str]) -> dict[str, Any]:
        """``POST /oauth/token``: the success body, or ``OAuthError``."""
        for name in ("client_id", "client_secret", "grant_type"):
            if not form.get(name):
                raise OAuthError(400, f"Missing parameter: {name}", "invalid_request")
        user_type = form.get("user_type") or "Location"
        if user_type != "Location":
            raise OAuthError(400, "Invalid parameter: user_type", "invalid_request")
        with self._lock:
            app = self._clients.get(form["client_id"])
            if app is None or not secrets.compare_digest(
                app.client_secret.encode(), form["client_secret"].encode()
            ):
                raise OAuthError(401, "Invalid client credentials", "invalid_client")
            grant_type = form["grant_type"]
            if grant_type == "authorization_code":
                grant = self._redeem_code(app, form)
            elif grant_type == "refresh_token":
                grant = self._redeem_refresh_token(app, form)
            else:
                raise OAuthError(400, "Invalid parameter: grant_type", "unsupported_grant_type")
            return self._issue(grant)

    def _redeem_code(self, app: OAuthClientApp, form: Mapping[str, str]) -> _Grant:
        code = form.get("code")
        if not code:
            raise OAuthError(400, "Missing parameter: code", "invalid_request")
        grant = self._codes.pop(code, None)  # single-use, even when the rest is wrong
        if (
            grant is None
            or grant.client_id != app.client_id
            or (grant.expires_at is not None and self.clock() > grant.expires_at)
            or form.get("redirect_uri", grant.redirect_uri) != grant.redirect_uri
        ):
            raise OAuthError(400, INVALID_CODE, "invalid_grant")
        return grant

    def _redeem_refresh_token(self, app: OAuthClientApp, form: Mapping[str, str]) -> _Grant:
        token = form.get("refresh_token")
        if not token:
            raise OAuthError(400, "Missing parameter: refresh_token", "invalid_request")
        grant = self._refresh_tokens.get(token)
        if grant is None or grant.is_used or grant.client_id != app.client_id:
            raise OAuthError(400, INVALID_GRANT, "invalid_grant")
        if grant.location_id in self._inactive:
            # GHL: "once the location becomes active again, the same refresh token can be used".
            raise OAuthError(400, LOCATION_NOT_ACTIVE, "invalid_request")
        grant.is_used = True
        return grant

    def _issue(self, grant: _Grant) -> dict[str, Any]:
        access = f"sbx-at-{secrets.token_hex(20)}"
        refresh = f"sbx-rt-{secrets.token_hex(20)}"
        ttl = self.access_token_ttl
        self._access[access] = _AccessToken(grant.location_id, self.clock() + ttl)
        self._refresh_tokens[refresh] = _Grant(
            client_id=grant.client_id, location_id=grant.location_id, scope=grant.scope
        )
        self.sandbox.add_token(access, grant.location_id)
        return {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": int(ttl) if float(ttl).is_integer() else ttl,
            "refresh_token": refresh,
            "scope": grant.scope,
            "userType": "Location",
            "locationId": grant.location_id,
            "companyId": DEFAULT_COMPANY_ID,
            "userId": DEFAULT_USER_ID,
        }

    # -- expiry ----------------------------------------------------------------------------

    def expire_due(self) -> None:
        """Revoke access tokens whose time is up (called before every API request)."""
        with self._lock:
            if not self._access:
                return
            now = self.clock()
            for token in [t for t, a in self._access.items() if a.expires_at <= now]:
                del self._access[token]
                self._expired.add(token)
                self.sandbox.revoke_token(token)

    def note_bearer(self, token: str) -> None:
        """Count an API request made with an access token that has expired."""
        with self._lock:
            if token in self._expired:
                self.expired_token_uses += 1


def _with_query(url: str, params: Mapping[str, str]) -> str:
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, urlencode(dict(params))) if q)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


# -- HTTP ------------------------------------------------------------------------------------


def oauth_routes(provider: OAuthProvider) -> list[BaseRoute]:
    """The choose-location page, the token endpoint and ``/_sandbox/oauth``."""

    async def choose_location(request: Request) -> Response:
        params = request.query_params
        client_id = params.get("client_id", "")
        redirect_uri = params.get("redirect_uri", "")
        state = params.get("state")
        if params.get("response_type") != "code":
            return _page(400, "Invalid request", "response_type must be code.")
        chosen = params.get("location_id") or provider.auto_approve_location
        if params.get("deny"):
            try:
                provider.check_client(client_id, redirect_uri)
            except OAuthError as exc:
                return _page(exc.status, "Invalid request", str(exc))
            answer = {"error": "access_denied", "error_description": "The user denied access"}
            if state is not None:
                answer["state"] = state
            return RedirectResponse(_with_query(redirect_uri, answer), status_code=302)
        if not chosen:
            return _location_page(provider, request)
        try:
            code = provider.authorize(
                client_id=client_id,
                redirect_uri=redirect_uri,
                location_id=chosen,
                scope=params.get("scope") or DEFAULT_SCOPE,
            )
        except OAuthError as exc:
            return _page(exc.status, "Invalid request", str(exc))
        answer = {"code": code}
        if state is not None:
            answer["state"] = state
        return RedirectResponse(_with_query(redirect_uri, answer), status_code=302)

    async def token(request: Request) -> Response:
        rule = provider.sandbox.faults.pick("POST", TOKEN_PATH)
        if rule is not None:
            provider.sandbox.stats.count_fault()
            early = await early_fault_response(rule, request)
            if early is not None:
                provider.sandbox.stats.count_request(TOKEN_ROUTE)
                return early
        form = await _read_form(request)
        grant = form.get("grant_type", "") if form is not None else ""
        known = grant in ("authorization_code", "refresh_token")
        provider.sandbox.stats.count_request(f"{TOKEN_ROUTE} {grant}" if known else TOKEN_ROUTE)
        if form is None:
            return json_response(
                422,
                {
                    "statusCode": 422,
                    "message": ["body must be application/x-www-form-urlencoded"],
                    "error": "Unprocessable Entity",
                },
            )
        try:
            return json_response(200, provider.token(form))
        except OAuthError as exc:
            return json_response(exc.status, exc.body)

    async def settings(request: Request) -> Response:
        if request.method == "POST":
            try:
                body = await read_json_object(request)
                ttl = body.get("access_token_ttl")
                if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float)):
                    raise bad_request("access_token_ttl must be a number of seconds")
                approve = body.get("auto_approve_location")
                if approve is not None and not isinstance(approve, str):
                    raise bad_request('auto_approve_location must be a location id or ""')
            except SandboxApiError as error:
                return error_response(error)
            provider.configure(access_token_ttl=ttl, auto_approve_location=approve)
            if body.get("expire_access_tokens") is True:
                provider.expire_access_tokens()
        return json_response(200, provider.snapshot())

    return [
        Route(AUTHORIZE_PATH, choose_location, methods=["GET"]),
        Route(TOKEN_PATH, token, methods=["POST"]),
        Route("/_sandbox/oauth", settings, methods=["GET", "POST"]),
    ]


async def _read_form(request: Request) -> dict[str, str] | None:
    """A form-encoded body (the spec's only content type for v2) as a dict; None otherwise."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return None
    raw = await request.body()
    try:
        return dict(parse_qsl(raw.decode(), keep_blank_values=True))
    except UnicodeDecodeError:
        return None


def _page(status: int, title: str, text: str) -> HTMLResponse:
    body = (
        f"<!doctype html><title>{html.escape(title)}</title>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(text)}</p>"
    )
    return HTMLResponse(body, status_code=status)


def _location_page(provider: OAuthProvider, request: Request) -> HTMLResponse:
    """The page a person sees: one link per location, each approving the app for it."""
    links = []
    for location_id in provider.sandbox.location_ids():
        query = {**dict(request.query_params), "location_id": location_id}
        href = f"{AUTHORIZE_PATH}?{urlencode(query)}"
        links.append(f'<li><a href="{html.escape(href)}">{html.escape(location_id)}</a></li>')
    client = html.escape(request.query_params.get("client_id", ""))
    body = (
        "<!doctype html><title>Choose a location</title>"
        f"<h1>Choose a location</h1><p>App {client} asks for access to contacts.</p>"
        f"<ul>{''.join(links)}</ul>"
    )
    return HTMLResponse(body)


class OAuthExpiryMiddleware:
    """Before every API request, revoke access tokens that expired (and count their reuse)."""

    def __init__(self, app: ASGIApp, provider: OAuthProvider) -> None:
        self.app = app
        self.provider = provider

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Expire due tokens, then pass the request on."""
        if scope["type"] == "http" and not str(scope.get("path", "")).startswith("/_sandbox"):
            self.provider.expire_due()
            for name, value in scope.get("headers", ()):
                if name == b"authorization":
                    scheme, _, token = value.decode("latin-1").partition(" ")
                    if scheme.lower() == "bearer" and token.strip():
                        self.provider.note_bearer(token.strip())
        await self.app(scope, receive, send)
