"""JSON in and out for the sandbox routes, with GHL's error bodies.

Responses are built from bytes (``contact.dumps`` or cached contact JSON) rather than through
``JSONResponse``, so a 500-contact search page is not re-encoded on every request.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ghlsync_cli.sandbox.contact import dumps
from ghlsync_cli.sandbox.errors import SandboxApiError

JSON_MEDIA_TYPE = "application/json"


def json_bytes_response(
    status: int, body: bytes, headers: Mapping[str, str] | None = None
) -> Response:
    """A response whose body is already JSON bytes."""
    return Response(
        body, status_code=status, headers=dict(headers or {}), media_type=JSON_MEDIA_TYPE
    )


def json_response(status: int, payload: Any, headers: Mapping[str, str] | None = None) -> Response:
    """A compact JSON response."""
    return json_bytes_response(status, dumps(payload), headers)


def error_response(error: SandboxApiError, headers: Mapping[str, str] | None = None) -> Response:
    """The JSON answer for a ``SandboxApiError``."""
    return json_response(error.status, error.body, headers)


async def read_json_object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object (``{}`` when empty); 400/422 otherwise, like NestJS."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SandboxApiError(
            status=400,
            body={
                "statusCode": 400,
                "message": f"Invalid JSON body: {exc}",
                "error": "Bad Request",
            },
        ) from None
    if not isinstance(body, dict):
        raise SandboxApiError(
            status=422,
            body={
                "statusCode": 422,
                "message": ["request body must be a JSON object"],
                "error": "Unprocessable Entity",
            },
        )
    return body
