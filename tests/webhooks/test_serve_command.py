"""``ghlsync serve`` as a real process: signed webhooks in, contacts out, PII masked in its log."""

from __future__ import annotations

import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from ghlsync_cli.sandbox import WEBHOOK_PUBLIC_KEY_PATH
from tests.helpers import Cli
from tests.webhooks.support import contact, encode, event, signed, wait_for

READY = re.compile(r"Receiving GHL webhooks on (http://127\.0\.0\.1:\d+)/webhooks/ghl")


@contextmanager
def serving(cli: Cli, *args: str) -> Iterator[tuple[str, list[str]]]:
    """Run ``ghlsync serve --port 0 ARGS``; yields its URL and the stderr lines read so far."""
    lines: list[str] = []
    with cli.spawn("serve", "--port", "0", *args) as proc:
        assert proc.stderr is not None
        reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")))
        reader.start()
        try:
            found = wait_for(
                lambda: next((m for line in lines if (m := READY.search(line))), None),
                timeout=20,
                what="serve to listen",
            )
            yield found.group(1), lines
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            reader.join(5)
        assert proc.returncode == 0, "".join(lines)


def test_serve_applies_signed_webhooks_and_masks_pii_in_its_log(connected: Cli) -> None:
    email, phone = "Secret.Person@Example.com", "+14155550199"
    raw = encode(event(firstName="Secret", email=email, phone=phone))
    with serving(connected, "--public-key", str(WEBHOOK_PUBLIC_KEY_PATH)) as (url, log):
        with httpx.Client(base_url=url, timeout=10) as http:
            assert http.post("/webhooks/ghl", content=raw, headers=signed(raw)).status_code == 200
            assert http.post("/webhooks/ghl", content=raw).status_code == 401
            assert http.get("/healthz").json()["status"] == "ok"
        row = wait_for(lambda: contact(connected.db), what="the contact in SQLite")
        assert (row["email"], row["phone"]) == (email, phone)
        wait_for(lambda: any("applied" in line for line in log), what="the applied log line")

    text = "".join(log)
    assert "received ContactCreate" in text
    assert "rejected a webhook (401)" in text
    for value in (email, email.lower(), phone, phone[1:]):
        assert value not in text


def test_serve_insecure_no_verify_accepts_unsigned_bodies(connected: Cli) -> None:
    raw = encode(event(firstName="Unsigned"))
    with serving(connected, "--insecure-no-verify") as (url, log):
        with httpx.Client(base_url=url, timeout=10) as http:
            assert http.post("/webhooks/ghl", content=raw).status_code == 200
        row = wait_for(lambda: contact(connected.db), what="the contact in SQLite")
        assert row["first_name"] == "Unsigned"
    assert "Signature checks are off" in "".join(log)
