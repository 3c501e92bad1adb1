"""The ``serve`` receiver on loopback: signed GHL events land in the SQLite file within seconds."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from ghlsync_cli.logs import mask_pii
from tests.helpers import Cli
from tests.webhooks.conftest import Receiver, StartReceiver
from tests.webhooks.support import (
    GHL_ID,
    LOCATION,
    contact,
    encode,
    event,
    iso_now,
    rows,
    signed,
    wait_for,
    wait_processed,
)

EMAIL = "Mary.Major@Example.com"
PHONE = "+14155550123"


def test_signed_contact_create_lands_in_sqlite_within_two_seconds(
    receiver: Receiver, connected: Cli
) -> None:
    started = time.monotonic()
    response = receiver.deliver(
        event(
            firstName="Mary",
            lastName="Major",
            email=EMAIL,
            phone=PHONE,
            companyName="Major Ltd",
            tags=["vip", "alpha"],
            dnd=False,
            source="webhook form",
        )
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "accepted", "duplicate": False, "inbox_id": 1}

    row = wait_for(lambda: contact(receiver.db), timeout=2.0, what="the contact in SQLite")
    assert time.monotonic() - started < 2.0
    shown = connected.json("contacts", "show", row["id"])
    assert {k: shown[k] for k in ("ghl_id", "location_id", "first_name", "last_name")} == {
        "ghl_id": GHL_ID,
        "location_id": LOCATION,
        "first_name": "Mary",
        "last_name": "Major",
    }
    assert shown["name"] == "Mary Major"
    assert shown["email"] == EMAIL
    assert shown["phone"] == PHONE
    assert shown["company"] == "Major Ltd"
    assert shown["tags"] == ["alpha", "vip"]
    assert shown["status"] == "active"
    [stored] = wait_processed(receiver.db)
    assert (stored["type"], stored["status"], stored["outcome"]) == (
        "ContactCreate",
        "applied",
        "created",
    )


@pytest.mark.parametrize("webhook_id", ["new", None], ids=["webhookId", "body hash"])
def test_the_same_webhook_delivered_twice_is_stored_and_applied_once(
    receiver: Receiver, webhook_id: str | None
) -> None:
    raw = encode(event(firstName="Twice", email="twice@example.com", webhook_id=webhook_id))
    first = receiver.post(raw, signed(raw))
    second = receiver.post(raw, signed(raw))

    assert first.status_code == second.status_code == 200
    assert first.json()["duplicate"] is False
    assert second.json() == {"status": "accepted", "duplicate": True, "inbox_id": 1}
    [stored] = wait_processed(receiver.db)
    assert stored["dedup_key"].startswith("webhook:" if webhook_id else "sha256:")
    assert len(rows(receiver.db, "contacts")) == 1


def test_ten_concurrent_deliveries_of_one_webhook_store_one_row(receiver: Receiver) -> None:
    raw = encode(event(firstName="Burst", email="burst@example.com"))
    gate = threading.Barrier(10)

    def deliver(_: int) -> httpx.Response:
        gate.wait(timeout=5)
        return receiver.post(raw, signed(raw))

    with ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(pool.map(deliver, range(10)))

    assert [a.status_code for a in answers] == [200] * 10
    assert sorted(a.json()["duplicate"] for a in answers) == [False] + [True] * 9
    assert {a.json()["inbox_id"] for a in answers} == {1}
    assert len(wait_processed(receiver.db)) == 1
    assert len(rows(receiver.db, "contacts")) == 1


def test_ten_concurrent_events_for_one_contact_make_one_local_contact(
    receiver: Receiver,
) -> None:
    """Ten edits of one GHL contact arrive at once, in any order: one contact, the newest wins."""
    bodies = [
        encode(event(firstName="Same", city=f"City {n}", timestamp=iso_now(seconds=n - 10)))
        for n in range(10)
    ]
    gate = threading.Barrier(10)

    def deliver(raw: bytes) -> httpx.Response:
        gate.wait(timeout=5)
        return receiver.post(raw, signed(raw))

    with ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(pool.map(deliver, bodies))

    assert [a.status_code for a in answers] == [200] * 10
    inbox = wait_processed(receiver.db)
    assert len(inbox) == 10
    outcomes = sorted(r["outcome"] for r in inbox)
    assert outcomes[0] == "created"
    assert set(outcomes[1:]) <= {"updated", "skipped: not newer than what was applied"}, outcomes
    [row] = rows(receiver.db, "contacts")
    assert (row["ghl_id"], row["city"]) == (GHL_ID, "City 9")


def test_healthz_reports_the_backlog(receiver: Receiver) -> None:
    response = receiver.http.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "inbox_backlog": 0}


def test_ghl_webhook_path_is_an_alias(receiver: Receiver) -> None:
    response = receiver.deliver(event(firstName="Alias"), path="/ghl-webhook")
    assert response.status_code == 200, response.text
    row = wait_for(lambda: contact(receiver.db), what="the contact in SQLite")
    assert row["first_name"] == "Alias"


def test_uninstall_disconnects_the_location(start_receiver: StartReceiver, connected: Cli) -> None:
    forgotten: list[str] = []
    receiver = start_receiver(on_disconnect=forgotten.append)
    body = event("UNINSTALL", ghl_id=None, appId="ve9EPM428h8vShlRW1KT")
    response = receiver.deliver(body)
    assert response.status_code == 200, response.text
    [stored] = wait_processed(receiver.db)
    assert stored["outcome"] == "disconnected"
    # The location's secrets are forgotten (serve passes the token store's delete).
    wait_for(lambda: forgotten, what="the secrets forgotten")
    assert forgotten == [LOCATION]

    status = connected.json("status")
    [location] = status["locations"]
    assert location["location_id"] == LOCATION
    assert location["connected"] is False

    # Events for a disconnected location are kept but no longer applied.
    assert receiver.deliver(event(firstName="After")).status_code == 200
    later = wait_processed(receiver.db)[-1]
    assert (later["status"], later["outcome"]) == (
        "skipped",
        f"skipped: location {LOCATION} not connected",
    )
    assert rows(receiver.db, "contacts") == []


def test_event_for_an_unknown_location_is_stored_and_skipped(receiver: Receiver) -> None:
    response = receiver.deliver(event(location_id="someOtherLocation01", firstName="Stranger"))
    assert response.status_code == 200, response.text
    [stored] = wait_processed(receiver.db)
    assert stored["location_id"] == "someOtherLocation01"
    assert stored["status"] == "skipped"
    assert stored["outcome"] == "skipped: location someOtherLocation01 not connected"
    assert rows(receiver.db, "contacts") == []


@pytest.mark.parametrize("clock", ["timestamp", "dateUpdated"])
def test_an_older_event_arriving_later_never_rolls_the_contact_back(
    receiver: Receiver, clock: str
) -> None:
    def at(seconds_ago: int, kind: str, city: str) -> httpx.Response:
        when = iso_now(seconds=-seconds_ago)
        times = {"timestamp": when} if clock == "timestamp" else {"dateUpdated": when}
        return receiver.deliver(event(kind, city=city, **times))

    assert at(120, "ContactCreate", "Oldtown").status_code == 200
    wait_for(lambda: contact(receiver.db), what="the contact in SQLite")
    assert at(10, "ContactUpdate", "Newtown").status_code == 200
    assert at(60, "ContactUpdate", "Middletown").status_code == 200

    inbox = wait_processed(receiver.db)
    assert [r["outcome"] for r in inbox] == [
        "created",
        "updated",
        "skipped: not newer than what was applied",
    ]
    assert contact(receiver.db)["city"] == "Newtown"


def test_an_update_older_than_a_delete_does_not_revive_the_contact(receiver: Receiver) -> None:
    receiver.deliver(event("ContactCreate", city="Oldtown", timestamp=iso_now(seconds=-120)))
    wait_for(lambda: contact(receiver.db), what="the contact in SQLite")
    receiver.deliver(event("ContactDelete", city="Oldtown", timestamp=iso_now(seconds=-10)))
    receiver.deliver(event("ContactUpdate", city="Newtown", timestamp=iso_now(seconds=-60)))

    inbox = wait_processed(receiver.db)
    assert [r["outcome"] for r in inbox] == [
        "created",
        "soft_deleted",
        "skipped: not newer than what was applied",
    ]
    row = contact(receiver.db)
    assert (row["status"], row["city"]) == ("inactive", "Oldtown")


def test_contact_delete_marks_the_contact_inactive_and_keeps_its_data(
    receiver: Receiver, connected: Cli
) -> None:
    fields = {"firstName": "Gone", "email": "gone@example.com", "city": "Austin", "tags": ["x"]}
    receiver.deliver(event("ContactCreate", timestamp=iso_now(seconds=-5), **fields))
    wait_for(lambda: contact(receiver.db), what="the contact in SQLite")
    receiver.deliver(event("ContactDelete", **fields))

    row = wait_for(
        lambda: (c := contact(receiver.db)) and c["status"] == "inactive" and c,
        what="the contact marked inactive",
    )
    shown = connected.json("contacts", "show", row["id"])
    assert shown["status"] == "inactive"
    assert (shown["first_name"], shown["email"], shown["city"], shown["tags"]) == (
        "Gone",
        "gone@example.com",
        "Austin",
        ["x"],
    )
    assert [r["outcome"] for r in wait_processed(receiver.db)] == ["created", "soft_deleted"]
    listed = connected.json("contacts", "list", "--status", "inactive")
    assert [c["id"] for c in listed] == [row["id"]]


def test_logs_never_show_the_contacts_email_or_phone_unmasked(
    receiver: Receiver, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The package's loggers (``ghlsync_cli.*``; ``ghlsync.*`` in older releases), all levels.
    for name in ("ghlsync", "ghlsync_cli"):
        monkeypatch.setattr(logging.getLogger(name), "propagate", True)
        caplog.set_level(logging.DEBUG, logger=name)
    pii = {"email": EMAIL, "phone": PHONE}

    receiver.deliver(event(firstName="Private", **pii))
    receiver.deliver(event("ContactUpdate", ghl_id="", **pii))  # applied as "not a contact"
    receiver.deliver(event("ContactUpdate", timestamp=iso_now(seconds=-900), **pii))  # stale
    raw = encode(event("ContactUpdate", **pii))
    receiver.post(raw, {"X-GHL-Signature": signed(b"other")["X-GHL-Signature"]})  # bad signature
    receiver.post(raw[:-1], signed(raw[:-1]))  # not JSON
    wait_for(lambda: contact(receiver.db), what="the contact in SQLite")
    wait_for(
        lambda: sum("applied" in r.getMessage() for r in caplog.records) >= 2,
        what="both stored events logged as applied",
    )

    logged = [
        r.getMessage() + (r.exc_text or "") for r in caplog.records if r.name.startswith("ghlsync")
    ]
    assert any("received ContactCreate" in line for line in logged), logged
    assert sum("rejected a webhook" in line for line in logged) == 3, logged
    text = "\n".join(logged)
    for value in (EMAIL, EMAIL.lower(), PHONE, PHONE.lstrip("+"), "4155550123"):
        assert value not in text
    # Whatever is logged about them is the masked form only.
    assert mask_pii(text) == text


def test_a_stored_event_that_cannot_be_applied_does_not_block_later_ones(
    receiver: Receiver,
) -> None:
    """One bad stored body must not stall the inbox: later webhooks still land within seconds."""
    # A first-year date with a positive offset is valid ISO 8601 but cannot be moved to UTC.
    poison = event(
        "ContactCreate", ghl_id="poisonContact0000001", dateUpdated="0001-01-01T00:00:00+01:00"
    )
    assert receiver.deliver(poison).status_code == 200
    assert receiver.deliver(event(firstName="Later")).status_code == 200

    row = wait_for(lambda: contact(receiver.db), what="the later contact in SQLite")
    assert row["first_name"] == "Later"
    inbox = wait_processed(receiver.db)
    assert [r["status"] for r in inbox][1] == "applied"
