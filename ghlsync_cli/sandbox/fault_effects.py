"""What each fault mode does to a request, once ``faults`` has decided that one fires.

Some faults replace GHL's answer before any work is done (a gateway 503, an HTML error page, a
dropped connection); others let the work happen and then damage the answer (a cut or misshapen
body), which is the nastier case for a client: the write took effect but it cannot tell.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ghlsync_cli.sandbox.contact import dumps
from ghlsync_cli.sandbox.errors import status_error, unauthorized
from ghlsync_cli.sandbox.faults import FaultRule
from ghlsync_cli.sandbox.responses import error_response

#: Where the server's own ``send`` is kept in the scope, for the ``reset`` fault.
RAW_SEND_KEY = "ghlsync.sandbox.raw_send"

_MALFORMED_BODY = (
    b"<html><head><title>502 Bad Gateway</title></head><body>Bad Gateway</body></html>"
)
#: Default ``wrong_shape`` bodies by kind of route: valid JSON that fails the response models.
WRONG_SHAPES: dict[str, Any] = {
    "search": {"contacts": "oops", "total": "many"},
    "contact": {"contact": "oops"},
    "tags": {"tags": "oops"},
    "delete": {"succeded": "oops"},
}


async def drop_connection(request: Request) -> bool:
    """Close the client's connection without an answer (RST); False if the server can't."""
    raw_send = request.scope.get(RAW_SEND_KEY)
    transport = getattr(getattr(raw_send, "__self__", None), "transport", None)
    if not isinstance(transport, asyncio.Transport):
        return False
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            # Linger 0 makes close() send a TCP RST: the client sees "connection reset".
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    # Let uvicorn notice the disconnect, so the response returned below is dropped quietly.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(1.0):
            while (await request.receive())["type"] != "http.disconnect":
                pass
    return True


async def early_fault_response(rule: FaultRule, request: Request) -> Response | None:
    """Answer for faults that replace GHL's answer; None lets the request go on."""
    if rule.mode == "delay":
        await asyncio.sleep(rule.delay_ms / 1000)
        return None
    if rule.mode == "status":
        headers = {"Retry-After": "1"} if rule.status == 429 else None
        return error_response(status_error(rule.status), headers)
    if rule.mode == "unauthorized":
        return error_response(unauthorized())
    if rule.mode == "malformed":
        return Response(_MALFORMED_BODY, status_code=200, media_type="text/html")
    if rule.mode == "reset":
        if await drop_connection(request):
            return Response(b"", status_code=502)
        # Without access to the socket (another ASGI server), a gateway error stands in.
        return error_response(status_error(502))
    return None


def damage_body(rule: FaultRule | None, body: bytes, shape: str) -> bytes:
    """Corrupt a real answer for faults that happen after GHL did the work."""
    if rule is None:
        return body
    if rule.mode == "truncated":
        return body[: len(body) // 2]
    if rule.mode == "wrong_shape":
        return dumps(rule.body if rule.body is not None else WRONG_SHAPES[shape])
    return body
