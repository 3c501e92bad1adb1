"""GHL (the sandbox) → signed webhook → ``serve`` → SQLite, with no reconcile in between."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ghlsync_cli.sandbox import Sandbox
from tests.helpers import Cli
from tests.webhooks.conftest import Receiver, StartReceiver
from tests.webhooks.support import contact, rows, wait_for, wait_processed

SEARCH = "POST /contacts/search"
UPSERT = "POST /contacts/upsert"
PUT = "PUT /contacts/{contactId}"


def test_an_edit_in_ghl_reaches_sqlite_within_two_seconds(
    sandbox: Sandbox, connected: Cli, receiver: Receiver
) -> None:
    sandbox.seed(5, seed=11)
    sandbox.webhooks.configure(receiver.url + "/webhooks/ghl")
    assert connected.json("initial-sync")["pull"]["created"] == 5
    target = sandbox.list_contacts()[2]
    searches = sandbox.stats.requests(SEARCH)

    started = time.monotonic()
    sandbox.ui_update_contact(target["id"], {"city": "Austin", "firstName": "Renamed"})
    row = wait_for(
        lambda: (c := contact(receiver.db, target["id"])) and c["city"] == "Austin" and c,
        timeout=2.0,
        what="the GHL edit in SQLite",
    )
    assert time.monotonic() - started < 2.0
    assert row["first_name"] == "Renamed"
    assert sandbox.wait_for_webhooks()
    assert sandbox.webhooks.stats()["failed"] == 0
    # Only the webhook carried it: no search (reconcile) ran after the initial sync.
    assert sandbox.stats.requests(SEARCH) == searches
    [stored] = wait_processed(receiver.db)
    assert (stored["type"], stored["outcome"]) == ("ContactUpdate", "updated")
    others = [r for r in rows(receiver.db, "contacts") if r["ghl_id"] != target["id"]]
    assert [r["city"] for r in others] == [
        c.get("city") for c in sandbox.list_contacts() if c["id"] != target["id"]
    ]


def test_the_echo_of_our_own_push_changes_nothing(
    sandbox: Sandbox, connected: Cli, receiver: Receiver
) -> None:
    sandbox.webhooks.configure(receiver.url + "/webhooks/ghl")
    connected.json("initial-sync")
    delivered = sandbox.webhooks.stats()["delivered"]

    added = connected.json(
        "contacts", "add", "--first-name", "Echo", "--email", "echo@example.com", "--tag", "vip"
    )
    assert added["ghl_id"]
    updated = connected.json("contacts", "update", added["id"], "--city", "Denver")
    assert sandbox.wait_for_webhooks()
    # GHL echoes the create, the tag add and the update back to us.
    assert sandbox.webhooks.stats()["delivered"] - delivered == 3

    inbox = wait_processed(receiver.db)
    assert [r["type"] for r in inbox] == ["ContactCreate", "ContactTagUpdate", "ContactUpdate"]
    # Each echo is applied (changing nothing) or skipped as not newer than what the push stored.
    assert {r["status"] for r in inbox} <= {"applied", "skipped"}, inbox
    after = connected.json("contacts", "show", added["id"])
    assert after == updated
    assert connected.json("conflicts", "list") == []
    assert rows(receiver.db, "outbox") == []
    assert len(rows(receiver.db, "contacts")) == 1
    # Nothing is left to push, so nothing is sent to GHL a second time.
    pushed = connected.json("push", "--pending")
    assert (pushed["created"], pushed["updated"], pushed["queued"]) == (0, 0, 0), pushed
    assert (sandbox.stats.requests(UPSERT), sandbox.stats.requests(PUT)) == (1, 1)
    assert sandbox.count_contacts() == 1


def test_the_create_echo_alone_does_not_undo_the_tags_we_pushed(
    sandbox: Sandbox, connected: Cli, start_receiver: StartReceiver, tmp_path: Path
) -> None:
    """GHL's ContactCreate echo shows the contact before our tag call; it must not remove them.

    A create is pushed as an upsert and then a tag call, so GHL sends ContactCreate (no tags)
    and then ContactTagUpdate. Here the echoes are first caught by a second receiver (a database
    with no connected location keeps them raw), then only the first is delivered.
    """
    catcher = start_receiver(db=tmp_path / "catcher.db")
    receiver = start_receiver()
    sandbox.webhooks.configure(catcher.url + "/webhooks/ghl")
    added = connected.json(
        "contacts", "add", "--first-name", "Echo", "--email", "echo@example.com", "--tag", "vip"
    )
    assert sandbox.wait_for_webhooks()
    caught = {r["type"]: r for r in wait_processed(catcher.db)}
    assert set(caught) == {"ContactCreate", "ContactTagUpdate"}
    create = caught["ContactCreate"]
    assert json.loads(create["body"])["tags"] == []

    response = receiver.post(bytes(create["body"]), json.loads(create["headers"]))
    assert response.status_code == 200, response.text
    [applied] = wait_processed(receiver.db)
    assert applied["outcome"] in {"unchanged", "skipped: not newer than what was applied"}
    assert connected.json("contacts", "show", added["id"]) == added
    assert sandbox.find_contact(added["ghl_id"])["tags"] == ["vip"]
