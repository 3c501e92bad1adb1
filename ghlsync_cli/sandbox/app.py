"""The sandbox's HTTP face: GHL API v2 contact routes, plus the ``/_sandbox`` admin routes.

Every API request passes the same gates, in a fixed order, so a client sees GHL's failures for
the same mistakes: injected faults first (they stand for the network and GHL's gateway), then the
bearer token (401), the rate limit (429 with ``Retry-After``), the ``Version`` header (400) and
the token's location (403); only then does the route run. Every answer past the token check
carries GHL's ``X-RateLimit-*`` headers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import Receive, Scope, Send

from ghlsync_cli.sandbox.admin import admin_routes
from ghlsync_cli.sandbox.contact import dumps
from ghlsync_cli.sandbox.errors import SandboxApiError, forbidden, unauthorized
from ghlsync_cli.sandbox.fault_effects import RAW_SEND_KEY, damage_body, early_fault_response
from ghlsync_cli.sandbox.oauth import OAuthExpiryMiddleware, OAuthProvider, oauth_routes
from ghlsync_cli.sandbox.responses import (
    error_response,
    json_bytes_response,
    json_response,
    read_json_object,
)
from ghlsync_cli.sandbox.routes import API_ROUTES, ApiCall, Handler
from ghlsync_cli.sandbox.state import Sandbox

API_VERSION = "2021-07-28"
ADMIN_PREFIX = "/_sandbox"


def _bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _check_version(request: Request) -> None:
    version = request.headers.get("version")
    if not version:
        raise SandboxApiError(
            status=400, body={"statusCode": 400, "message": "Version header is required"}
        )
    if version != API_VERSION:
        raise SandboxApiError(
            status=400,
            body={"statusCode": 400, "message": f"Version header must be {API_VERSION}"},
        )


def _check_location(request: Request, body: dict[str, Any], location_id: str) -> None:
    wanted = body.get("locationId") or request.query_params.get("locationId")
    if wanted and wanted != location_id:
        raise forbidden()


def _api_endpoint(
    sandbox: Sandbox, template: str, handler: Handler, shape: str
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        sandbox.stats.count_request(template)
        rule = sandbox.faults.pick(request.method, request.url.path)
        if rule is not None:
            sandbox.stats.count_fault()
            early = await early_fault_response(rule, request)
            if early is not None:
                return early
        token = _bearer_token(request)
        location_id = sandbox.location_for_token(token) if token else None
        if location_id is None:
            return error_response(unauthorized())
        decision = sandbox.rate_limiter.check(location_id)
        if not decision.allowed:
            sandbox.stats.count_rate_limited()
            return json_response(
                429, {"statusCode": 429, "message": "Too Many Requests"}, decision.headers
            )
        try:
            _check_version(request)
            body = await read_json_object(request) if request.method != "GET" else {}
            _check_location(request, body, location_id)
            call = ApiCall(
                sandbox=sandbox,
                location_id=location_id,
                request=request,
                body=body,
                ignore_cursor=rule is not None and rule.mode == "stuck_cursor",
            )
            status, payload = handler(call)
        except SandboxApiError as error:
            status, payload = error.status, dumps(error.body)
        return json_bytes_response(status, damage_body(rule, payload, shape), decision.headers)

    return endpoint


class SandboxApp(Starlette):
    """Starlette, plus access to the server's own ``send`` (to drop connections on purpose)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI call, remembering the server's ``send`` in the scope."""
        if scope["type"] == "http":
            scope[RAW_SEND_KEY] = send
        await super().__call__(scope, receive, send)


def _not_found_handler(sandbox: Sandbox) -> Callable[[Request, Exception], Awaitable[Response]]:
    # NestJS answers an unknown path, or an unknown method on a known path, with this 404.
    async def handler(request: Request, exc: Exception) -> Response:
        if not request.url.path.startswith(ADMIN_PREFIX):
            sandbox.stats.count_request(None)
        message = f"Cannot {request.method} {request.url.path}"
        return json_response(404, {"statusCode": 404, "message": message, "error": "Not Found"})

    return handler


def create_app(sandbox: Sandbox) -> Starlette:
    """The sandbox ASGI app serving ``sandbox``: GHL contact routes and ``/_sandbox`` admin."""
    routes: list[BaseRoute] = [
        Route(path, _api_endpoint(sandbox, template, handler, shape), methods=[method])
        for path, method, template, handler, shape in API_ROUTES
    ]
    oauth = OAuthProvider.for_sandbox(sandbox)
    routes.extend(oauth_routes(oauth))
    routes.append(Mount(ADMIN_PREFIX, routes=admin_routes(sandbox)))
    not_found = _not_found_handler(sandbox)
    return SandboxApp(
        routes=routes,
        exception_handlers={404: not_found, 405: not_found},
        middleware=[Middleware(OAuthExpiryMiddleware, provider=oauth)],
    )
