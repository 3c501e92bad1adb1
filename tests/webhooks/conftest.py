"""A running webhook receiver on loopback, fed through real HTTP with httpx."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from ghlsync_cli.asgi import ThreadedServer
from ghlsync_cli.sandbox import WEBHOOK_PUBLIC_KEY_PATH
from ghlsync_cli.server import ServeConfig, create_app
from ghlsync_cli.webhooks import SignatureVerifier
from tests.helpers import Cli
from tests.webhooks.support import encode, signed

SANDBOX_KEY = "sandbox"


@dataclass
class Receiver:
    """``ghlsync serve``'s app on a loopback port, with a client to deliver webhooks to it."""

    server: ThreadedServer
    http: httpx.Client
    db: Path

    @property
    def url(self) -> str:
        """Base URL of the receiver."""
        return self.server.url

    def post(
        self, raw: bytes, headers: Mapping[str, str] | None = None, path: str = "/webhooks/ghl"
    ) -> httpx.Response:
        """POST raw bytes exactly as given."""
        return self.http.post(path, content=raw, headers=dict(headers or {}))

    def deliver(self, body: Any, path: str = "/webhooks/ghl") -> httpx.Response:
        """POST a body signed with the sandbox key, as GHL (here: the sandbox) would."""
        raw = encode(body)
        return self.post(raw, signed(raw), path)


StartReceiver = Callable[..., Receiver]


@pytest.fixture
def connected(cli: Cli) -> Cli:
    """The CLI with the sandbox location connected (this creates and migrates the database)."""
    cli.connect()
    return cli


@pytest.fixture
def start_receiver(connected: Cli) -> Iterator[StartReceiver]:
    """Start receivers: ``start_receiver(verifier=..., busy_timeout_ms=..., db=...)``.

    The default verifier trusts GHL's keys plus the sandbox test key; ``verifier=None`` is
    ``serve --insecure-no-verify``. Every receiver and client is closed when the test ends.
    """
    with ExitStack() as stack:

        def start(
            *,
            verifier: SignatureVerifier | str | None = SANDBOX_KEY,
            db: Path | None = None,
            **options: Any,
        ) -> Receiver:
            if verifier == SANDBOX_KEY:
                verifier = SignatureVerifier.load([WEBHOOK_PUBLIC_KEY_PATH])
            assert not isinstance(verifier, str)
            path = db or connected.db
            app = create_app(ServeConfig(db=path, verifier=verifier, **options))
            server = stack.enter_context(ThreadedServer(app, name="receiver"))
            http = stack.enter_context(httpx.Client(base_url=server.url, timeout=10))
            return Receiver(server=server, http=http, db=path)

        yield start


@pytest.fixture
def receiver(start_receiver: StartReceiver) -> Receiver:
    """A receiver that trusts the sandbox key, on the connected database."""
    return start_receiver()
