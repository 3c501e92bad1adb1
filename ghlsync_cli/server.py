"""``ghlsync serve``: the webhook receiver.

A request is answered 200 only after its raw body is committed to the inbox, so GHL never gets an
acknowledgement for something that could still be lost. When the inbox cannot be written (the
database is locked for too long, the disk is full) the answer is 429, which GHL retries. Stored
events are applied in arrival order by one background thread, so a burst of webhooks never waits
on merging, and the merge never runs two events for one location at once.

Rejections, before anything is stored: no or bad signature → 401; ``timestamp`` more than 5
minutes away → 401; body over 1 MiB → 413; not UTF-8, not JSON, nested too deep, or not an event
→ 400.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ghlsync_cli.errors import GhlsyncError, InputError, StorageError
from ghlsync_cli.store import Store
from ghlsync_cli.sync.inbox import DISCONNECTED, Receipt, backlog, process_pending, receive
from ghlsync_cli.webhooks import (
    MAX_BODY_BYTES,
    SignatureError,
    SignatureVerifier,
    StaleEventError,
    WebhookEvent,
    check_timestamp,
    parse_event,
)

log = logging.getLogger(__name__)
WEBHOOK_PATHS = ("/webhooks/ghl", "/ghl-webhook")
RETRY_AFTER_SECONDS = "5"


@dataclass(frozen=True)
class ServeConfig:
    """What the receiver needs: where to store, how to verify, how to normalise."""

    db: Path
    verifier: SignatureVerifier | None
    region: str = "US"
    busy_timeout_ms: int = 15000
    check_timestamps: bool = True
    # Called with a location's id once an uninstall event has disconnected it: the CLI forgets
    # that location's secrets there, as `ghlsync disconnect` does.
    on_disconnect: Callable[[str], object] | None = None


class _Stores(threading.local):
    """One SQLite connection per thread: connections must not be shared across threads."""

    store: Store | None = None


class Receiver:
    """The webhook app's state: per-thread stores and the worker that applies stored events."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self._stores = _Stores()
        self._opened: list[Store] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self.processed = 0

    def store(self) -> Store:
        """This thread's connection to the database."""
        if self._stores.store is None:
            store = Store.open(self.config.db, busy_timeout_ms=self.config.busy_timeout_ms)
            self._stores.store = store
            with self._lock:
                self._opened.append(store)
        return self._stores.store

    def start(self) -> None:
        """Start the worker (and apply whatever an earlier run left pending)."""
        self._stop.clear()
        self._worker = threading.Thread(target=self._work, name="ghlsync-inbox", daemon=True)
        self._worker.start()
        self._wake.set()

    def stop(self) -> None:
        """Stop the worker and close every connection."""
        self._stop.set()
        self._wake.set()
        if self._worker is not None:
            self._worker.join(10)
        with self._lock:
            for store in self._opened:
                store.close()
            self._opened.clear()

    def wake(self) -> None:
        """Tell the worker new events are stored."""
        self._wake.set()

    def _work(self) -> None:
        store = Store.open(self.config.db, busy_timeout_ms=self.config.busy_timeout_ms)
        try:
            while not self._stop.is_set():
                self._wake.wait(1.0)
                self._wake.clear()
                self._drain(store)
        finally:
            store.close()

    def _drain(self, store: Store) -> None:
        while not self._stop.is_set():
            try:
                done = process_pending(store, region=self.config.region, limit=100)
            except StorageError as exc:
                # Busy or full: the events stay pending; try again on the next wake-up.
                log.warning("inbox processing paused: %s", exc.message)
                self._stop.wait(1.0)
                return
            except Exception:
                log.exception("inbox processing failed; will retry")
                self._stop.wait(1.0)
                return
            for item in done:
                self.processed += 1
                log.info(
                    "applied %s for location %s: %s", item.type, item.location_id, item.outcome
                )
                if item.outcome == DISCONNECTED and item.location_id is not None:
                    self._forget(item.location_id)
            if not done:
                return

    def _forget(self, location_id: str) -> None:
        if self.config.on_disconnect is None:
            return
        try:
            self.config.on_disconnect(location_id)
        except Exception as exc:  # the location is disconnected either way
            reason = exc.message if isinstance(exc, GhlsyncError) else type(exc).__name__
            log.warning("could not remove the secrets of location %s: %s", location_id, reason)

    def _store_event(self, event: WebhookEvent) -> Receipt:
        # Runs in a worker thread, so it must use that thread's own connection.
        return receive(self.store(), event)

    async def receive_webhook(self, request: Request) -> Response:
        """POST /webhooks/ghl: verify, parse, store, acknowledge."""
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return _refuse(413, "body too large")
        body = bytearray()
        try:
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    return _refuse(413, "body too large")
        except ClientDisconnect:
            return _refuse(400, "client disconnected")
        raw = bytes(body)
        try:
            if self.config.verifier is not None:
                self.config.verifier.verify(raw, request.headers)
            event = parse_event(raw, request.headers)
            if self.config.check_timestamps:
                check_timestamp(event)
        except (SignatureError, StaleEventError) as exc:
            return _refuse(401, exc.message)
        except InputError as exc:
            return _refuse(400, exc.message)
        try:
            receipt = await run_in_threadpool(self._store_event, event)
        except StorageError as exc:
            log.warning("could not store a webhook, asking GHL to retry: %s", exc.message)
            return JSONResponse(
                {"status": "retry", "error": "inbox unavailable"},
                status_code=429,
                headers={"Retry-After": RETRY_AFTER_SECONDS},
            )
        self.wake()
        log.info(
            "received %s for location %s%s",
            event.type,
            event.location_id,
            " (duplicate)" if receipt.duplicate else "",
        )
        return JSONResponse(
            {"status": "accepted", "duplicate": receipt.duplicate, "inbox_id": receipt.inbox_id}
        )

    async def healthz(self, request: Request) -> Response:
        """GET /healthz: alive, and how many stored events wait to be applied."""
        try:
            pending = await run_in_threadpool(lambda: backlog(self.store()))
        except GhlsyncError as exc:
            return JSONResponse({"status": "degraded", "error": exc.message}, status_code=503)
        return JSONResponse({"status": "ok", "inbox_backlog": pending})


def _refuse(status: int, reason: str) -> Response:
    log.warning("rejected a webhook (%d): %s", status, reason)
    return JSONResponse({"status": "rejected", "error": reason}, status_code=status)


def create_app(config: ServeConfig) -> Starlette:
    """The receiver as a Starlette app (the worker starts and stops with the app)."""
    receiver = Receiver(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        receiver.start()
        try:
            yield
        finally:
            receiver.stop()

    routes = [Route(path, receiver.receive_webhook, methods=["POST"]) for path in WEBHOOK_PATHS]
    routes.append(Route("/healthz", receiver.healthz, methods=["GET"]))
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.receiver = receiver
    return app
