"""Signed webhook delivery: GHL's event shape, order, types, retries and the Ed25519 signature."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from ghlsync_cli.sandbox import DEFAULT_LOCATION_ID as LOCATION
from ghlsync_cli.sandbox import WEBHOOK_PUBLIC_KEY_PATH, Sandbox, sign_body, verify_body


class Receiver:
    """A loopback HTTP endpoint that records webhook posts and answers scripted statuses."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                if status == 200:
                    receiver.received.append((dict(self.headers), body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.received]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    hook = Receiver()
    hook.thread.start()
    yield hook
    hook.server.shutdown()
    hook.server.server_close()
    hook.thread.join()


def _public_key() -> Ed25519PublicKey:
    key = load_pem_public_key(WEBHOOK_PUBLIC_KEY_PATH.read_bytes())
    assert isinstance(key, Ed25519PublicKey)
    return key


def test_every_change_is_delivered_signed_and_in_order(
    api, admin, sandbox: Sandbox, receiver: Receiver
):
    assert admin.post("/webhooks", json={"url": receiver.url, "enabled": True}).status_code == 200

    contact = api.post(
        "/contacts/", json={"locationId": LOCATION, "firstName": "Hook", "email": "h@example.com"}
    ).json()["contact"]
    contact_id = contact["id"]
    api.put(f"/contacts/{contact_id}", json={"city": "Austin"})
    api.post(f"/contacts/{contact_id}/tags", json={"tags": ["vip"]})
    api.put(f"/contacts/{contact_id}", json={"dnd": True})
    admin.patch(f"/contacts/{contact_id}", json={"lastName": "Edited"})
    api.delete(f"/contacts/{contact_id}")
    assert sandbox.webhooks.wait_idle(5)

    events = receiver.events()
    assert [e["type"] for e in events] == [
        "ContactCreate",
        "ContactUpdate",
        "ContactTagUpdate",
        "ContactDndUpdate",
        "ContactUpdate",
        "ContactDelete",
    ]
    key = _public_key()
    for headers, body in receiver.received:
        assert headers["Content-Type"] == "application/json"
        key.verify(base64.b64decode(headers["X-GHL-Signature"]), body)
        assert verify_body(body, headers["X-GHL-Signature"])
    for event in events:
        assert event["locationId"] == LOCATION
        assert event["id"] == contact_id
        assert len(event["webhookId"]) == 36
        assert event["timestamp"].endswith("Z")
        assert "firstNameLowerCase" not in event
    assert events[2]["tags"] == ["vip"]
    assert events[3]["dnd"] is True
    assert events[4]["lastName"] == "Edited"
    assert events[5]["city"] == "Austin"
    timestamps = [e["timestamp"] for e in events]
    assert timestamps == sorted(timestamps)
    assert sandbox.webhooks.stats()["delivered"] == 6


def test_failed_deliveries_are_retried(sandbox: Sandbox, receiver: Receiver):
    receiver.statuses = [500, 503]
    sandbox.webhooks.configure(receiver.url)

    sandbox.ui_create_contact({"firstName": "Retry"})
    assert sandbox.webhooks.wait_idle(5)

    assert [e["firstName"] for e in receiver.events()] == ["Retry"]
    assert sandbox.webhooks.stats()["failed"] == 0


def test_a_client_error_is_not_retried(sandbox: Sandbox, receiver: Receiver):
    receiver.statuses = [400]
    sandbox.webhooks.configure(receiver.url)

    sandbox.ui_create_contact({"firstName": "Rejected"})
    assert sandbox.webhooks.wait_idle(5)

    assert receiver.events() == []
    assert sandbox.webhooks.stats()["failed"] == 1


def test_nothing_is_sent_when_disabled(sandbox: Sandbox, receiver: Receiver):
    sandbox.webhooks.configure(receiver.url, enabled=False)

    sandbox.ui_create_contact({"firstName": "Quiet"})

    assert sandbox.webhooks.wait_idle(1)
    assert receiver.received == []


def test_sign_body_matches_the_shipped_public_key():
    body = b'{"type":"ContactCreate"}'

    signature = sign_body(body)

    _public_key().verify(base64.b64decode(signature), body)
    assert verify_body(body, signature)
    assert not verify_body(body + b" ", signature)
    assert not verify_body(body, "not base64!")
