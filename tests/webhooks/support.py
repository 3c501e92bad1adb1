"""Building, signing and checking webhook deliveries for the receiver tests."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from ghlsync_cli.sandbox import DEFAULT_LOCATION_ID, sign_body

T = TypeVar("T")

LOCATION = DEFAULT_LOCATION_ID
GHL_ID = "wbhkContact000000001"


def iso_now(*, seconds: float = 0) -> str:
    """Now (moved by ``seconds``) as GHL writes it: ISO 8601, milliseconds, Z."""
    moment = datetime.now(UTC) + timedelta(seconds=seconds)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event(
    kind: str = "ContactCreate",
    *,
    location_id: str | None = LOCATION,
    ghl_id: str | None = GHL_ID,
    timestamp: str | None = "now",
    webhook_id: str | None = "new",
    **fields: Any,
) -> dict[str, Any]:
    """A webhook body in GHL's shape: type, locationId, the contact's keys, webhookId, timestamp."""
    body: dict[str, Any] = {"type": kind}
    if location_id is not None:
        body["locationId"] = location_id
    if ghl_id is not None:
        body["id"] = ghl_id
    body.update(fields)
    if webhook_id is not None:
        body["webhookId"] = str(uuid.uuid4()) if webhook_id == "new" else webhook_id
    if timestamp is not None:
        body["timestamp"] = iso_now() if timestamp == "now" else timestamp
    return body


def encode(body: object) -> bytes:
    """The raw bytes GHL would send for ``body``."""
    return json.dumps(body).encode()


def signed(raw: bytes) -> dict[str, str]:
    """Headers of a delivery signed with the sandbox's test key."""
    return {"Content-Type": "application/json", "X-GHL-Signature": sign_body(raw)}


def rows(db: Path, table: str, where: str = "") -> list[dict[str, Any]]:
    """Every row of ``table``, read with plain sqlite3 as another program would."""
    with closing(sqlite3.connect(db)) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(f"SELECT * FROM {table} {where} ORDER BY rowid")]


def dump(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, to compare two states of a database."""
    with closing(sqlite3.connect(db)) as conn:
        tables = [
            name
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
            )
        ]
        return {t: list(conn.execute(f"SELECT * FROM {t} ORDER BY rowid")) for t in tables}


def contact(db: Path, ghl_id: str = GHL_ID) -> dict[str, Any] | None:
    """The local row linked to a GHL contact, or None."""
    found = rows(db, "contacts", f"WHERE ghl_id = '{ghl_id}'")
    return found[0] if found else None


def wait_for(check: Callable[[], T | None], *, timeout: float = 2.0, what: str = "") -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what or check}")
        time.sleep(0.01)


def wait_processed(db: Path, *, timeout: float = 2.0) -> list[dict[str, Any]]:
    """The inbox once every stored event has been applied or skipped."""

    def settled() -> list[dict[str, Any]] | None:
        inbox = rows(db, "inbox")
        return inbox if inbox and all(r["status"] != "pending" for r in inbox) else None

    return wait_for(settled, timeout=timeout, what="every inbox event processed")
