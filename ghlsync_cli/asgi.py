"""Serving a Starlette app with uvicorn: in the foreground (commands) or in a thread (tests, demo).

Both the webhook receiver (``serve``) and the GHL sandbox use it. Binding the socket ourselves makes
a taken port an ``OSError`` the caller can report, and lets port 0 pick a free one.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

import uvicorn

_START_TIMEOUT_S = 10.0


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


def bind(host: str, port: int) -> socket.socket:
    """A listening socket; a taken port raises ``OSError`` here, before uvicorn starts.

    TCP_NODELAY (inherited by accepted connections): uvicorn writes a response's headers and body
    separately, and with Nagle's algorithm the body would wait for the client's delayed ACK.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def uvicorn_config(app: Any, *, quiet: bool, access_log: bool = False) -> uvicorn.Config:
    """uvicorn settings shared by every server ghlsync runs."""
    return uvicorn.Config(
        app,
        log_level="warning",
        access_log=access_log,
        # Library use must not reconfigure the host program's logging.
        log_config=None if quiet else uvicorn.config.LOGGING_CONFIG,
        lifespan="on",
        http="h11",
        ws="none",
        loop="asyncio",
        server_header=False,
        # Longer than a client's pool idles between requests, so no request races a closing socket.
        timeout_keep_alive=75,
        timeout_graceful_shutdown=1,
    )


def serve_forever(
    app: Any, *, host: str, port: int, on_ready: Callable[[str], None] | None = None
) -> None:
    """Serve until Ctrl-C (SIGINT/SIGTERM); ``on_ready(url)`` once listening.

    Raises ``OSError`` when ``host:port`` cannot be bound.
    """
    sock = bind(host, port)
    try:
        server = _Server(uvicorn_config(app, quiet=False), on_ready or (lambda url: None))
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        # uvicorn re-raises the SIGINT it already handled; the shutdown was clean.
        pass
    finally:
        sock.close()


class ThreadedServer:
    """An ASGI app served from a background thread; use as a context manager."""

    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int = 0, name: str = "asgi"):
        self.app = app
        self.host = host
        self.port = port
        self.name = name
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
            raise RuntimeError(f"the {self.name} server is not running")
        return self._url

    @property
    def running(self) -> bool:
        """True between start() and stop()."""
        return self._thread is not None

    def start(self) -> ThreadedServer:
        """Start serving and wait until connections are accepted."""
        if self._thread is not None:
            raise RuntimeError(f"the {self.name} server is already running")
        self._ready.clear()
        self._error = None
        self._socket = bind(self.host, self.port)
        self._server = _Server(uvicorn_config(self.app, quiet=True), self._started)
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        if not self._ready.wait(_START_TIMEOUT_S) or self._url is None:
            self.stop()
            raise RuntimeError(f"the {self.name} server did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        """Stop serving and wait for the thread to end."""
        server, thread = self._server, self._thread
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(_START_TIMEOUT_S)
            if thread.is_alive() and server is not None:
                server.force_exit = True
                thread.join(_START_TIMEOUT_S)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None
        self._url = None

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

    def __enter__(self) -> ThreadedServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
