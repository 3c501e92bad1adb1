"""``ghlsync serve`` and cron's ``reconcile`` writing the same file at once lose nothing.

GHL (the sandbox) changes contacts and sends a signed webhook for each change, 50 a second, some
of them twice as GHL's retries do; meanwhile two timers run ``reconcile`` as real processes over
and over, so runs also overlap each other. "database is locked" must never surface: the receiver
may answer 429 (GHL retries, and so does this sender) but every delivery ends acknowledged, and a
reconcile ends 0, or 75 only because the other timer's run holds the location's lock. At the end
every acknowledged change is in the database, the inbox holds each webhookId exactly once, and
both sides agree.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import pytest

from ghlsync_cli.asgi import ThreadedServer
from ghlsync_cli.sandbox import DEFAULT_LOCATION_ID, WEBHOOK_PUBLIC_KEY_PATH, Sandbox, sign_body
from ghlsync_cli.sandbox.clock import ms_from_value
from ghlsync_cli.sandbox.webhooks import CONTACT_TAG_UPDATE, build_event
from ghlsync_cli.server import ServeConfig, create_app
from ghlsync_cli.webhooks import SignatureVerifier
from tests.helpers import Cli, contact_rows
from tests.reliability.support import assert_converged, durations, integrity
from tests.webhooks.support import rows, wait_for

RATE = 50  # webhooks per second
DUPLICATE_SHARE = 0.05  # deliveries GHL sends again (same webhookId)


@dataclass
class Deliveries:
    """What the sender sent and what the receiver acknowledged."""

    acked: dict[str, tuple[str, str]] = field(default_factory=dict)  # webhookId → (ghl id, tag)
    sent: int = 0
    resent: int = 0
    refused: int = 0  # 429 answers, each retried until acknowledged


@dataclass
class Timers:
    """Every reconcile run's exit code and stderr."""

    runs: list[tuple[int, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def deliver(http: httpx.Client, raw: bytes, deliveries: Deliveries) -> httpx.Response:
    """POST a signed body until it is acknowledged, retrying 429 as GHL does (but sooner)."""
    headers = {"Content-Type": "application/json", "X-GHL-Signature": sign_body(raw)}
    deadline = time.monotonic() + 30
    while True:
        response = http.post("/webhooks/ghl", content=raw, headers=headers)
        if response.status_code != 429:
            assert response.status_code == 200, response.text
            return response
        deliveries.refused += 1
        assert time.monotonic() < deadline, "the receiver kept answering 429 for 30 s"
        time.sleep(0.05)


def change_in_ghl_and_notify(
    sandbox: Sandbox, http: httpx.Client, ghl_id: str, tag: str, deliveries: Deliveries
) -> bytes:
    """Tag a contact in GHL and deliver GHL's ContactTagUpdate for it; returns the raw body."""
    sandbox.add_tags(DEFAULT_LOCATION_ID, ghl_id, [tag])
    contact = sandbox.find_contact(ghl_id)
    assert contact is not None
    body = build_event(
        CONTACT_TAG_UPDATE, DEFAULT_LOCATION_ID, contact, ms_from_value(contact["dateUpdated"])
    )
    raw = json.dumps(body).encode()
    answer = deliver(http, raw, deliveries).json()
    assert answer["duplicate"] is False, answer
    deliveries.acked[body["webhookId"]] = (ghl_id, tag)
    deliveries.sent += 1
    return raw


@pytest.mark.parametrize("seconds", durations(8, 60))
def test_serve_and_timer_reconciles_write_at_once_and_lose_nothing(
    cli: Cli, sandbox: Sandbox, rng: random.Random, seconds: float
) -> None:
    sandbox.seed(200, seed=51)
    cli.connect()
    assert cli("initial-sync").exit_code == 0
    targets = [c["id"] for c in sandbox.list_contacts()]
    verifier = SignatureVerifier.load([WEBHOOK_PUBLIC_KEY_PATH])
    app = create_app(ServeConfig(db=cli.db, verifier=verifier))
    deliveries, timers = Deliveries(), Timers()
    deadline = time.monotonic() + seconds

    def timer() -> None:
        while time.monotonic() < deadline:
            run = cli.run("reconcile", timeout=120)
            with timers.lock:
                timers.runs.append((run.returncode, run.stderr))

    with (
        ThreadedServer(app, name="receiver") as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        threads = [threading.Thread(target=timer, name=f"timer-{n}") for n in range(2)]
        for thread in threads:
            thread.start()
        try:
            sent_raw: list[bytes] = []
            next_send = time.monotonic()
            while time.monotonic() < deadline:
                n = deliveries.sent + 1
                sent_raw.append(
                    change_in_ghl_and_notify(
                        sandbox, http, rng.choice(targets), f"wh-{n}", deliveries
                    )
                )
                if rng.random() < DUPLICATE_SHARE:
                    again = deliver(http, rng.choice(sent_raw), deliveries).json()
                    assert again["duplicate"] is True, again
                    deliveries.resent += 1
                next_send += 1 / RATE
                time.sleep(max(0.0, next_send - time.monotonic()))
        finally:
            for thread in threads:
                thread.join(180)
        # Every stored event gets applied: the receiver's worker drains the inbox.
        wait_for(
            lambda: http.get("/healthz").json()["inbox_backlog"] == 0,
            timeout=60,
            what="the inbox to drain",
        )

    # The load really happened, and nothing surfaced a locked database.
    assert deliveries.sent >= RATE * seconds * 0.7, deliveries.sent
    assert len(timers.runs) >= 4, timers.runs
    codes = Counter(code for code, _ in timers.runs)
    assert set(codes) <= {0, 75}, [r for r in timers.runs if r[0] not in (0, 75)]
    assert codes[0] >= 2, codes
    for code, stderr in timers.runs:
        assert "locked" not in stderr.lower() and "busy" not in stderr.lower(), stderr
        if code == 75:
            assert "Another ghlsync run is working on location" in stderr, stderr

    # Nothing acknowledged is missing: the inbox has each webhookId once, each applied ...
    inbox = rows(cli.db, "inbox")
    keys = Counter(r["dedup_key"] for r in inbox)
    assert keys == Counter(f"webhook:{webhook_id}" for webhook_id in deliveries.acked)
    assert {r["status"] for r in inbox} <= {"applied", "skipped"}, Counter(
        r["outcome"] for r in inbox
    )
    # ... and every change a webhook carried is in the contacts table.
    tags = {r["ghl_id"]: set(json.loads(r["tags"])) for r in contact_rows(cli.db)}
    lost = [(g, t) for g, t in deliveries.acked.values() if t not in tags[g]]
    assert not lost, lost[:10]
    assert integrity(cli.db) == "ok"
    assert cli("reconcile").exit_code == 0
    assert_converged(cli, sandbox, why=f"{deliveries.sent} webhooks, {len(timers.runs)} runs")
