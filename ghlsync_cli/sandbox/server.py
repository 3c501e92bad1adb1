"""Running the sandbox: blocking (``make demo``) or in a background thread (tests, benchmarks).

``SandboxServer`` binds port 0 on loopback, so parallel test workers never collide, and waits
until uvicorn accepts connections before handing out its URL. Starting and stopping take well
under a second, so a test can have a fresh server of its own.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

import uvicorn

from ghlsync_cli.sandbox.app import create_app
from ghlsync_cli.sandbox.ratelimit import (
    DEFAULT_DAILY_LIMIT,
    DEFAULT_INTERVAL_MS,
    DEFAULT_MAX_REQUESTS,
    RateLimitSettings,
)
from ghlsync_cli.sandbox.state import DEFAULT_LOCATION_ID, DEFAULT_TOKEN, Sandbox

_START_TIMEOUT_S = 10.0


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


class _Server(uvicorn.Server):
    """uvicorn, telling us the URL once it accepts connections."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[str], None]) -> None:
        super().__init__(config)
        self._on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start listening, then report the bound URL."""
        await super().startup(sockets)
        if self.should_exit:
            return
        host, port = self.servers[0].sockets[0].getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        self._on_started(f"http://{shown}:{port}")


def _bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket; binding here makes a taken port an ``OSError`` for the caller."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family)


def _uvicorn_config(sandbox: Sandbox, *, quiet: bool) -> uvicorn.Config:
    return uvicorn.Config(
        create_app(sandbox),
        log_level="warning",
        access_log=False,
        # Library use must not reconfigure the host program's logging.
        log_config=None if quiet else uvicorn.config.LOGGING_CONFIG,
        lifespan="off",
        http="h11",
        ws="none",
        loop="asyncio",
        server_header=False,
        # Longer than a client's pool idles between pages, so no request races a closing socket.
        timeout_keep_alive=75,
        timeout_graceful_shutdown=1,
    )


def serve_sandbox(config: SandboxConfig, on_ready: Callable[[str], None] | None = None) -> None:
    """Build, seed and serve a sandbox until Ctrl-C; ``on_ready(url)`` once listening.

    Returns normally after a graceful shutdown on Ctrl-C (SIGINT). Raises ``OSError`` when
    ``host:port`` cannot be bound (e.g. the port is taken).
    """
    sock = _bind(config.host, config.port)
    sandbox: Sandbox | None = None
    try:
        sandbox = config.build_sandbox()
        server = _Server(_uvicorn_config(sandbox, quiet=False), on_ready or (lambda url: None))
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        # uvicorn re-raises the SIGINT it already handled; the shutdown was clean, so return.
        pass
    finally:
        sock.close()
        if sandbox is not None:
            sandbox.close()


class SandboxServer:
    """A sandbox served from a background thread on loopback; use as a context manager."""

    def __init__(self, config: SandboxConfig | None = None, *, sandbox: Sandbox | None = None):
        self.config = config or SandboxConfig()
        self.sandbox = sandbox if sandbox is not None else self.config.build_sandbox()
        self._url: str | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._server: _Server | None = None
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:43123``; only while running."""
        if self._url is None:
            raise RuntimeError("the sandbox server is not running")
        return self._url

    def start(self) -> SandboxServer:
        """Start serving and wait until connections are accepted."""
        if self._thread is not None:
            raise RuntimeError("the sandbox server is already running")
        self._ready.clear()
        self._error = None
        self._socket = _bind(self.config.host, self.config.port)
        self._server = _Server(_uvicorn_config(self.sandbox, quiet=True), self._started)
        self._thread = threading.Thread(target=self._run, name="ghl-sandbox", daemon=True)
        self._thread.start()
        if not self._ready.wait(_START_TIMEOUT_S) or self._url is None:
            self.stop()
            raise RuntimeError(f"the sandbox server did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        """Stop serving and wait for the thread to end (pending webhooks are delivered first)."""
        server, thread = self._server, self._thread
        if server is not None:
            server.should_exit = True
            server.force_exit = True
        if thread is not None:
            thread.join(_START_TIMEOUT_S)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None
        self._url = None
        self.sandbox.close()

    def _started(self, url: str) -> None:
        self._url = url
        self._ready.set()

    def _run(self) -> None:
        assert self._server is not None and self._socket is not None
        try:
            self._server.run(sockets=[self._socket])
        except BaseException as exc:  # the thread's boundary: report to start(), never hang it
            self._error = exc
        finally:
            self._ready.set()

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
