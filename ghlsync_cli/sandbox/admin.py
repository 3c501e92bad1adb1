"""``/_sandbox/*``: the routes a demo or a test uses to set the stage and look behind it.

They play the parts that are not the API client: a person editing contacts in the GHL UI, an
operator turning on faults or rate limits, an observer counting requests. They need no token, are
never rate limited or faulted, and each one is also a plain method on ``Sandbox``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ghlsync_cli.sandbox.errors import SandboxApiError
from ghlsync_cli.sandbox.faults import FaultRule
from ghlsync_cli.sandbox.ratelimit import RateLimitSettings
from ghlsync_cli.sandbox.responses import (
    error_response,
    json_bytes_response,
    json_response,
    read_json_object,
)
from ghlsync_cli.sandbox.state import Sandbox

AdminHandler = Callable[[Sandbox, Request, dict[str, Any]], Any]


def _bad(message: str) -> SandboxApiError:
    return SandboxApiError(status=400, body={"statusCode": 400, "message": message})


def _location(request: Request, body: dict[str, Any]) -> str | None:
    value = body.get("locationId") or request.query_params.get("locationId")
    return str(value) if value else None


def _int(body: dict[str, Any], key: str, default: int | None = None) -> int:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"{key} must be an integer")
    return value


def _optional_int(body: dict[str, Any], key: str) -> int | None:
    return None if body.get(key) is None else _int(body, key)


def _ratelimit_dict(settings: RateLimitSettings) -> dict[str, Any]:
    return {
        "enabled": settings.enabled,
        "max": settings.max_requests,
        "interval_ms": settings.interval_ms,
        "daily": settings.daily,
    }


def _health(sandbox: Sandbox, request: Request, body: dict[str, Any]) -> Any:
    return {
        "status": "ok",
        "locationId": sandbox.default_location_id,
        "contacts": sandbox.count_contacts(),
    }


def _seed(sandbox: Sandbox, request: Request, body: dict[str, Any]) -> Any:
    count = _int(body, "count")
    seed = _int(body, "seed", 0)
    replace = body.get("replace", True)
    if not isinstance(replace, bool):
        raise _bad("replace must be a boolean")
    location = _location(request, body)
    total = sandbox.seed(count, seed, location_id=location, replace=replace)
    return {"seeded": count, "total": total, "locationId": location or sandbox.default_location_id}


def _list_contacts(sandbox: Sandbox, request: Request, body: dict[str, Any]) -> Any:
    return sandbox.contacts_json(location_id=_location(request, body))


def _get_contact(sandbox: Sandbox, request: Request, body: dict[str, Any]) -> Any:
    contact_id = str(request.path_params["contactId"])
    contact = sandbox.find_contact(contact_id, location_id=_location(request, body))
    if contact is None:
        raise SandboxApiError(status=404, body={"statusCode": 404, "message": "Contact not found"})
    return {"contact": contact}


def _create_contact(sandbox: Sandbox, request: Request, body: dict[str, Any]) -> Any:
    location = _location(request, body)
    return 201, {"contact": sandbox.ui_create_contact(body, location_id=location)}


def _update_contact(sandbox: Sandbox, request: Request, body: dict[str, Any]) -> Any:
    contact_id = str(request.path_params["contactId"])
    location = request.query_params.get("locationId")
    return {"contact": sandbox.ui_update_contact(contact_id, body, location_id=location)}


def _delete_contact(sandbox: Sandbox, request: Request, body: dict[str, Any]) -> Any:
    contact_id = str(request.path_params["contactId"])
    sandbox.ui_delete_contact(contact_id, location_id=_location(request, body))
    return {"deleted": contact_id}


def _get_faults(sandbox: Sandbox, request: Request, body: dict[str, Any]) -> Any:
    return {"rules": sandbox.faults.rules()}


def _set_faults(sandbox: Sandbox, request: Request, body: dict[str, Any]) -> Any:
    raw = body.get("rules")
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        raise _bad("rules must be an array of objects")
    rules = [FaultRule.from_dict(item) for item in raw]
    if body.get("append") is True:
        for rule in rules:
            sandbox.faults.add_rule(rule)
    else:
        sandbox.faults.set_rules(rules)
    return {"rules": sandbox.faults.rules()}


def _clear_faults(sandbox: Sandbox, request: Request, body: dict[str, Any]) -> Any:
    sandbox.faults.clear()
    return {"rules": []}


def _get_ratelimit(sandbox: Sandbox, request: Request, body: dict[str, Any]) -> Any:
    return _ratelimit_dict(sandbox.rate_limiter.settings)


def _set_ratelimit(sandbox: Sandbox, request: Request, body: dict[str, Any]) -> Any:
    enabled = body.get("enabled")
    if enabled is not None and not isinstance(enabled, bool):
        raise _bad("enabled must be a boolean")
    settings = sandbox.rate_limiter.configure(
        enabled=enabled,
        max_requests=_optional_int(body, "max"),
        interval_ms=_optional_int(body, "interval_ms"),
        daily=_optional_int(body, "daily"),
    )
    return _ratelimit_dict(settings)


def _settings(sandbox: Sandbox, request: Request, body: dict[str, Any]) -> Any:
    location = _location(request, body)
    if request.method == "POST" and "allow_duplicates" in body:
        allowed = body["allow_duplicates"]
        if not isinstance(allowed, bool):
            raise _bad("allow_duplicates must be a boolean")
        sandbox.set_allow_duplicates(allowed, location_id=location)
    return {
        "locationId": location or sandbox.default_location_id,
        "allow_duplicates": sandbox.allows_duplicates(location_id=location),
    }


def _stats(sandbox: Sandbox, request: Request, body: dict[str, Any]) -> Any:
    return {**sandbox.stats.snapshot(), "webhooks": sandbox.webhooks.stats()}


def _reset_stats(sandbox: Sandbox, request: Request, body: dict[str, Any]) -> Any:
    sandbox.stats.reset()
    return _stats(sandbox, request, body)


def _webhooks(sandbox: Sandbox, request: Request, body: dict[str, Any]) -> Any:
    if request.method == "POST":
        url = body.get("url")
        enabled = body.get("enabled", True)
        if url is not None and not isinstance(url, str):
            raise _bad("url must be a string or null")
        if not isinstance(enabled, bool):
            raise _bad("enabled must be a boolean")
        sandbox.webhooks.configure(url, enabled=enabled)
    return sandbox.webhooks.stats()


def _wait_webhooks(sandbox: Sandbox, request: Request, body: dict[str, Any]) -> Any:
    timeout = body.get("timeout", 5)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise _bad("timeout must be a number")
    return {"idle": sandbox.webhooks.wait_idle(float(timeout))}


def _add_token(sandbox: Sandbox, request: Request, body: dict[str, Any]) -> Any:
    token = body.get("token")
    if not isinstance(token, str) or not token:
        raise _bad("token must be a non-empty string")
    location = _location(request, body) or sandbox.default_location_id
    sandbox.add_token(token, location)
    return 201, {"token": token, "locationId": location}


def _revoke_token(sandbox: Sandbox, request: Request, body: dict[str, Any]) -> Any:
    return {"revoked": sandbox.revoke_token(str(request.path_params["token"]))}


def _reset(sandbox: Sandbox, request: Request, body: dict[str, Any]) -> Any:
    sandbox.reset()
    return {"status": "ok"}


def _admin_endpoint(
    sandbox: Sandbox, handler: AdminHandler
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            body = await read_json_object(request) if request.method != "GET" else {}
            # Off the event loop: seeding 100k contacts or waiting for webhooks takes a while.
            result = await asyncio.to_thread(handler, sandbox, request, body)
        except SandboxApiError as error:
            return error_response(error)
        except (ValueError, KeyError) as exc:
            return error_response(_bad(str(exc.args[0]) if exc.args else str(exc)))
        status, payload = result if isinstance(result, tuple) else (200, result)
        if isinstance(payload, bytes):
            return json_bytes_response(status, payload)
        return json_response(status, payload)

    return endpoint


_ADMIN: tuple[tuple[str, list[str], AdminHandler], ...] = (
    ("/health", ["GET"], _health),
    ("/seed", ["POST"], _seed),
    ("/contacts", ["GET"], _list_contacts),
    ("/contacts", ["POST"], _create_contact),
    ("/contacts/{contactId}", ["GET"], _get_contact),
    ("/contacts/{contactId}", ["PATCH"], _update_contact),
    ("/contacts/{contactId}", ["DELETE"], _delete_contact),
    ("/faults", ["GET"], _get_faults),
    ("/faults", ["POST"], _set_faults),
    ("/faults", ["DELETE"], _clear_faults),
    ("/ratelimit", ["GET"], _get_ratelimit),
    ("/ratelimit", ["POST"], _set_ratelimit),
    ("/settings", ["GET", "POST"], _settings),
    ("/stats", ["GET"], _stats),
    ("/stats/reset", ["POST"], _reset_stats),
    ("/webhooks", ["GET", "POST"], _webhooks),
    ("/webhooks/wait", ["POST"], _wait_webhooks),
    ("/tokens", ["POST"], _add_token),
    ("/tokens/{token}", ["DELETE"], _revoke_token),
    ("/reset", ["POST"], _reset),
)


def admin_routes(sandbox: Sandbox) -> list[Route]:
    """The ``/_sandbox`` routes (mount them under that prefix)."""
    return [
        Route(path, _admin_endpoint(sandbox, handler), methods=methods)
        for path, methods, handler in _ADMIN
    ]
