"""Running the sandbox: blocking (``make demo``) or in a background thread (tests, benchmarks).

``SandboxServer`` binds port 0 on loopback, so parallel test workers never collide, and waits
until uvicorn accepts connections before handing out its URL. Starting and stopping take well
under a second, so a test can have a fresh server of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from ghlsync_cli.asgi import ThreadedServer, serve_forever
from ghlsync_cli.sandbox.app import create_app
from ghlsync_cli.sandbox.ratelimit import (
    DEFAULT_DAILY_LIMIT,
    DEFAULT_INTERVAL_MS,
    DEFAULT_MAX_REQUESTS,
    RateLimitSettings,
)
from ghlsync_cli.sandbox.state import DEFAULT_LOCATION_ID, DEFAULT_TOKEN, Sandbox


@dataclass
class SandboxConfig:
    """How to build and serve a sandbox."""

    host: str = "127.0.0.1"
    port: int = 0
    seed_count: int = 0
    seed: int = 0
    location_id: str = DEFAULT_LOCATION_ID
    token: str = DEFAULT_TOKEN
    rate_limit_enabled: bool = True
    rate_limit_max: int = DEFAULT_MAX_REQUESTS
    rate_limit_interval_ms: int = DEFAULT_INTERVAL_MS
    rate_limit_daily: int = DEFAULT_DAILY_LIMIT
    allow_duplicates: bool = False
    webhook_url: str | None = None

    def build_sandbox(self) -> Sandbox:
        """A ``Sandbox`` with these settings, seeded with ``seed_count`` contacts."""
        sandbox = Sandbox(
            location_id=self.location_id,
            token=self.token,
            allow_duplicates=self.allow_duplicates,
            rate_limit=RateLimitSettings(
                enabled=self.rate_limit_enabled,
                max_requests=self.rate_limit_max,
                interval_ms=self.rate_limit_interval_ms,
                daily=self.rate_limit_daily,
            ),
            webhook_url=self.webhook_url,
        )
        if self.seed_count:
            sandbox.seed(self.seed_count, self.seed)
        return sandbox


def serve_sandbox(config: SandboxConfig, on_ready: Callable[[str], None] | None = None) -> None:
    """Build, seed and serve a sandbox until Ctrl-C; ``on_ready(url)`` once listening.

    Returns normally after a graceful shutdown on Ctrl-C (SIGINT). Raises ``OSError`` when
    ``host:port`` cannot be bound (e.g. the port is taken).
    """
    sandbox = config.build_sandbox()
    try:
        serve_forever(create_app(sandbox), host=config.host, port=config.port, on_ready=on_ready)
    finally:
        sandbox.close()


class SandboxServer:
    """A sandbox served from a background thread on loopback; use as a context manager."""

    def __init__(self, config: SandboxConfig | None = None, *, sandbox: Sandbox | None = None):
        self.config = config or SandboxConfig()
        self.sandbox = sandbox if sandbox is not None else self.config.build_sandbox()
        self._server = ThreadedServer(
            create_app(self.sandbox),
            host=self.config.host,
            port=self.config.port,
            name="ghl-sandbox",
        )

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:43123``; only while running."""
        return self._server.url

    def start(self) -> SandboxServer:
        """Start serving and wait until connections are accepted."""
        self._server.start()
        return self

    def stop(self) -> None:
        """Stop serving and wait for the thread to end (pending webhooks are delivered first)."""
        self._server.stop()
        self.sandbox.close()

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
