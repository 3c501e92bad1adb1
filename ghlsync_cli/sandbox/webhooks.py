"""Signed, ordered delivery of contact webhooks, like GHL's ``Contact*`` events.

GHL POSTs an event for each contact change: the contact's keys plus ``type``, ``locationId``,
``webhookId`` and ``timestamp``, signed with Ed25519 in ``X-GHL-Signature``. The sandbox sends the
same shape from one background thread and a FIFO queue, so events arrive in the order the changes
happened (GHL gives no such promise; a receiver that copes with in-order delivery here must still
not rely on it). Failed deliveries are retried a few times with backoff, then counted as failed.
"""

from __future__ import annotations

import queue
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from ghlsync_cli.sandbox.clock import iso_from_ms
from ghlsync_cli.sandbox.contact import dumps
from ghlsync_cli.sandbox.signing import SIGNATURE_HEADER, sign_body

CONTACT_CREATE = "ContactCreate"
CONTACT_UPDATE = "ContactUpdate"
CONTACT_DELETE = "ContactDelete"
CONTACT_TAG_UPDATE = "ContactTagUpdate"
CONTACT_DND_UPDATE = "ContactDndUpdate"

_DND_KEYS = frozenset({"dnd", "dndSettings", "inboundDndSettings"})


def classify_update(before: Mapping[str, Any], after: Mapping[str, Any], default: str) -> str:
    """Event type: only tags changed → TagUpdate, only dnd → DndUpdate, nothing → ``default``."""
    changed = {
        key
        for key in set(before) | set(after)
        if key != "dateUpdated" and before.get(key) != after.get(key)
    }
    if changed == {"tags"}:
        return CONTACT_TAG_UPDATE
    if changed and changed <= _DND_KEYS:
        return CONTACT_DND_UPDATE
    if not changed:
        return default
    return CONTACT_UPDATE


def build_event(
    event_type: str, location_id: str, contact: Mapping[str, Any], timestamp_ms: int
) -> dict[str, Any]:
    """A webhook body in GHL's shape: ``type``, ``locationId``, the contact, id and timestamp."""
    body: dict[str, Any] = {"type": event_type, "locationId": location_id}
    for key, value in contact.items():
        if key not in ("type", "locationId"):
            body[key] = value
    body["webhookId"] = str(uuid.uuid4())
    body["timestamp"] = iso_from_ms(timestamp_ms)
    return body


@dataclass(frozen=True)
class WebhookSettings:
    """Where events go; nothing is sent while ``url`` is None or ``enabled`` is False."""

    url: str | None = None
    enabled: bool = True

    @property
    def is_active(self) -> bool:
        """Whether events are being delivered."""
        return self.enabled and bool(self.url)


class WebhookDispatcher:
    """Queues events and POSTs them, signed and in order, from one background thread."""

    def __init__(
        self,
        settings: WebhookSettings | None = None,
        *,
        max_attempts: int = 4,
        backoff_s: float = 0.1,
        timeout_s: float = 5.0,
    ) -> None:
        self._settings = settings or WebhookSettings()
        self._max_attempts = max_attempts
        self._backoff_s = backoff_s
        self._timeout_s = timeout_s
        self._queue: queue.SimpleQueue[tuple[str, bytes] | None] = queue.SimpleQueue()
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._pending = 0
        self.delivered = 0
        self.failed = 0
        self.last_error: str | None = None

    @property
    def settings(self) -> WebhookSettings:
        """The current destination."""
        return self._settings

    def configure(self, url: str | None, *, enabled: bool = True) -> WebhookSettings:
        """Send future events to ``url`` (None stops delivery)."""
        self._settings = WebhookSettings(url=url, enabled=enabled)
        return self._settings

    def publish(self, event: Mapping[str, Any]) -> bool:
        """Queue one event if delivery is on; returns whether it was queued."""
        settings = self._settings
        if not settings.is_active or settings.url is None:
            return False
        body = dumps(event)
        with self._lock:
            self._pending += 1
            if self._thread is None or not self._thread.is_alive():
                self._stopping.clear()
                self._thread = threading.Thread(
                    target=self._run, name="sandbox-webhooks", daemon=True
                )
                self._thread.start()
            self._queue.put((settings.url, body))
        return True

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Block until every queued event was delivered or gave up; False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: self._pending == 0, timeout=timeout)

    def stats(self) -> dict[str, Any]:
        """Delivery counters and settings, for ``/_sandbox/stats``."""
        with self._lock:
            return {
                "url": self._settings.url,
                "enabled": self._settings.enabled,
                "delivered": self.delivered,
                "failed": self.failed,
                "pending": self._pending,
                "last_error": self.last_error,
            }

    def reset_counters(self, timeout: float = 5.0) -> None:
        """Let queued deliveries finish (or give up), then zero the counters."""
        self.wait_idle(timeout)
        with self._lock:
            self.delivered = self.failed = 0
            self.last_error = None

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (up to ``timeout``), then stop the thread."""
        self.wait_idle(timeout)
        with self._lock:
            thread = self._thread
            self._thread = None
        if thread is None:
            return
        self._stopping.set()
        self._queue.put(None)
        thread.join(timeout)

    def _run(self) -> None:
        with httpx.Client(timeout=self._timeout_s) as client:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                url, body = item
                ok = False
                try:
                    ok = self._deliver(client, url, body)
                except Exception as exc:  # the thread's boundary: record, never die silently
                    self.last_error = f"{type(exc).__name__}: {exc}"
                finally:
                    with self._lock:
                        self._pending -= 1
                        if ok:
                            self.delivered += 1
                        else:
                            self.failed += 1
                        self._lock.notify_all()

    def _deliver(self, client: httpx.Client, url: str, body: bytes) -> bool:
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign_body(body)}
        for attempt in range(self._max_attempts):
            if attempt and self._stopping.wait(self._backoff_s * 2 ** (attempt - 1)):
                break
            try:
                response = client.post(url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                continue
            if response.is_success:
                return True
            self.last_error = f"HTTP {response.status_code}"
            if response.status_code < 500 and response.status_code != 429:
                break
        return False
