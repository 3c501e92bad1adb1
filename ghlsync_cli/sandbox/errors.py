"""The error answers GHL gives, as one exception the routes turn into a JSON response.

GHL's API is a NestJS service: 400 bodies are ``{statusCode, message}``, 401 adds ``error``, and
validation failures (422) carry a *list* of class-validator messages. Raising one exception type
from the state layer keeps every route's error path identical to the spec's common schemas.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any


class SandboxApiError(Exception):
    """A GHL error answer: HTTP status plus the exact JSON body GHL would send."""

    def __init__(self, *, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"{status}: {body.get('message')}")
        self.status = status
        self.body = body


def bad_request(message: str, *, meta: dict[str, Any] | None = None) -> SandboxApiError:
    """400 ``{statusCode, message[, meta]}`` (BadRequestDTO)."""
    body: dict[str, Any] = {"statusCode": 400, "message": message}
    if meta is not None:
        body["meta"] = meta
    return SandboxApiError(status=400, body=body)


def unprocessable(*messages: str) -> SandboxApiError:
    """422 ``{statusCode, message: [...], error}`` (UnprocessableDTO)."""
    return SandboxApiError(
        status=422,
        body={"statusCode": 422, "message": list(messages), "error": "Unprocessable Entity"},
    )


def unauthorized(message: str = "Invalid JWT") -> SandboxApiError:
    """401 ``{statusCode, message, error}`` (UnauthorizedDTO)."""
    return SandboxApiError(
        status=401, body={"statusCode": 401, "message": message, "error": "Unauthorized"}
    )


def forbidden() -> SandboxApiError:
    """403 for a token used on a location it was not issued for."""
    return SandboxApiError(
        status=403,
        body={"statusCode": 403, "message": "The token does not have access to this location."},
    )


def contact_not_found() -> SandboxApiError:
    """400 ``Contact not found``: the contacts spec documents no 404 for a missing id."""
    return bad_request("Contact not found")


def status_error(status: int, message: str | None = None) -> SandboxApiError:
    """Any status with GHL's generic body, e.g. 503 ``Service Unavailable``."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return SandboxApiError(status=status, body={"statusCode": status, "message": message or phrase})
