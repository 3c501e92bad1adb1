"""The GHL contact routes as plain functions: validated request in, status and JSON bytes out.

Each handler only translates between HTTP and a ``Sandbox`` method; authentication, rate limits,
faults and error rendering happen once, around every handler, in ``app``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from ghlsync_cli.sandbox.contact import dumps
from ghlsync_cli.sandbox.errors import unprocessable
from ghlsync_cli.sandbox.state import Sandbox


@dataclass(frozen=True)
class ApiCall:
    """What a route handler gets once the gates have passed."""

    sandbox: Sandbox
    location_id: str
    request: Request
    body: dict[str, Any]
    ignore_cursor: bool


Handler = Callable[[ApiCall], tuple[int, bytes]]


def _search(call: ApiCall) -> tuple[int, bytes]:
    _require_location(call.body)
    page = call.sandbox.search_contacts(
        call.location_id, call.body, ignore_cursor=call.ignore_cursor
    )
    return 200, page.to_json()


def _get(call: ApiCall) -> tuple[int, bytes]:
    contact = call.sandbox.get_contact(call.location_id, _contact_id(call))
    return 200, dumps({"contact": contact})


def _create(call: ApiCall) -> tuple[int, bytes]:
    _require_location(call.body)
    contact = call.sandbox.create_contact(call.location_id, call.body)
    return 201, dumps({"contact": contact})


def _upsert(call: ApiCall) -> tuple[int, bytes]:
    _require_location(call.body)
    is_new, contact = call.sandbox.upsert_contact(call.location_id, call.body)
    return 200, dumps({"new": is_new, "contact": contact, "traceId": str(uuid.uuid4())})


def _update(call: ApiCall) -> tuple[int, bytes]:
    contact = call.sandbox.update_contact(call.location_id, _contact_id(call), call.body)
    return 200, dumps({"succeded": True, "contact": contact})


def _delete(call: ApiCall) -> tuple[int, bytes]:
    call.sandbox.delete_contact(call.location_id, _contact_id(call))
    return 200, dumps({"succeded": True})


def _add_tags(call: ApiCall) -> tuple[int, bytes]:
    tags = call.sandbox.add_tags(call.location_id, _contact_id(call), call.body.get("tags"))
    return 201, dumps({"tags": tags})


def _remove_tags(call: ApiCall) -> tuple[int, bytes]:
    tags = call.sandbox.remove_tags(call.location_id, _contact_id(call), call.body.get("tags"))
    return 200, dumps({"tags": tags})


def _contact_id(call: ApiCall) -> str:
    return str(call.request.path_params["contactId"])


def _require_location(body: dict[str, Any]) -> None:
    if not isinstance(body.get("locationId"), str) or not body["locationId"]:
        raise unprocessable("locationId should not be empty", "locationId must be a string")


#: (path, method, route template for stats, handler, wrong-shape kind)
API_ROUTES: tuple[tuple[str, str, str, Handler, str], ...] = (
    ("/contacts/search", "POST", "POST /contacts/search", _search, "search"),
    ("/contacts/upsert", "POST", "POST /contacts/upsert", _upsert, "contact"),
    ("/contacts/", "POST", "POST /contacts/", _create, "contact"),
    ("/contacts", "POST", "POST /contacts/", _create, "contact"),
    ("/contacts/{contactId}/tags", "POST", "POST /contacts/{contactId}/tags", _add_tags, "tags"),
    (
        "/contacts/{contactId}/tags",
        "DELETE",
        "DELETE /contacts/{contactId}/tags",
        _remove_tags,
        "tags",
    ),
    ("/contacts/{contactId}", "GET", "GET /contacts/{contactId}", _get, "contact"),
    ("/contacts/{contactId}", "PUT", "PUT /contacts/{contactId}", _update, "contact"),
    ("/contacts/{contactId}", "DELETE", "DELETE /contacts/{contactId}", _delete, "delete"),
)
