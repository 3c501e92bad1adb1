"""``ghlsync contacts show|list`` and ``ghlsync status``: what a user or a script reads back.

Data goes to stdout (a table, or one JSON document with ``--json``); messages go to stderr, so
``ghlsync … --json | jq`` works whatever else the run had to say.
"""

from __future__ import annotations

import json
import re
import sqlite3
from typing import Any

import pytest

from ghlsync_cli.sandbox import DEFAULT_LOCATION_ID, FaultRule, Sandbox
from tests.helpers import Cli

CONTACT_KEYS = {
    "id",
    "ghl_id",
    "location_id",
    "first_name",
    "last_name",
    "name",
    "email",
    "phone",
    "company",
    "address1",
    "city",
    "state",
    "postal_code",
    "country",
    "tags",
    "dnd",
    "source",
    "status",
    "created_at",
    "updated_at",
}
TEXT_KEYS = CONTACT_KEYS - {"id", "ghl_id", "location_id", "tags", "dnd", "status"}
ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
E164 = re.compile(r"^\+[1-9]\d{6,14}$")


def synced(cli: Cli, sandbox: Sandbox, count: int, seed: int) -> list[dict[str, Any]]:
    """Seed GHL, connect and initial-sync; returns ``contacts list --json``."""
    sandbox.seed(count, seed=seed)
    cli.connect()
    cli.json("initial-sync")
    contacts: list[dict[str, Any]] = cli.json("contacts", "list")
    return contacts


def assert_contract_contact(contact: dict[str, Any]) -> None:
    """One contact has exactly the contract's keys, with the contract's types."""
    assert set(contact) == CONTACT_KEYS
    assert isinstance(contact["id"], str) and contact["id"]
    assert contact["ghl_id"] is None or isinstance(contact["ghl_id"], str)
    assert contact["location_id"] == DEFAULT_LOCATION_ID
    assert contact["status"] in ("active", "inactive", "deleted")
    assert isinstance(contact["dnd"], bool)
    assert isinstance(contact["tags"], list)
    assert contact["tags"] == sorted(contact["tags"])
    assert all(isinstance(tag, str) for tag in contact["tags"])
    for key in TEXT_KEYS:
        assert contact[key] is None or isinstance(contact[key], str), key
    assert contact["phone"] is None or E164.match(contact["phone"]), contact["phone"]
    assert ISO_UTC.match(contact["created_at"]), contact["created_at"]
    assert ISO_UTC.match(contact["updated_at"]), contact["updated_at"]
    names = [contact["first_name"], contact["last_name"]]
    assert contact["name"] == (" ".join(n for n in names if n) or None)


def test_contacts_list_json_is_a_list_of_contract_contacts(cli: Cli, sandbox: Sandbox) -> None:
    contacts = synced(cli, sandbox, 40, seed=31)

    assert isinstance(contacts, list)
    assert len(contacts) == 40
    for contact in contacts:
        assert_contract_contact(contact)
    assert {c["ghl_id"] for c in contacts} == {c["id"] for c in sandbox.list_contacts()}
    assert len({c["id"] for c in contacts}) == 40
    assert any(c["phone"] for c in contacts)
    assert any(c["tags"] for c in contacts)
    # The same database lists the same way twice.
    assert cli.json("contacts", "list") == contacts


def test_contacts_list_json_on_an_empty_database_is_an_empty_list(cli: Cli) -> None:
    assert cli.json("contacts", "list") == []
    result = cli("contacts", "list")
    assert result.exit_code == 0, result.output
    assert result.stderr.strip() == "0 contacts."


def test_contacts_list_limit(cli: Cli, sandbox: Sandbox) -> None:
    contacts = synced(cli, sandbox, 10, seed=32)

    assert cli.json("contacts", "list", "--limit", "3") == contacts[:3]
    zero = cli("contacts", "list", "--limit", "0")
    assert zero.exit_code == 2, zero.output


def test_contacts_list_status_filter(cli: Cli, sandbox: Sandbox) -> None:
    contacts = synced(cli, sandbox, 20, seed=33)
    gone_in_ghl, deleted_here = contacts[3], contacts[7]
    sandbox.ui_delete_contact(gone_in_ghl["ghl_id"])
    assert cli.json("reconcile", "--full")["pull"]["soft_deleted"] == 1
    deleted = cli("contacts", "delete", deleted_here["id"], "--yes")
    assert deleted.exit_code == 0, deleted.output

    def ids(*status: str) -> set[str]:
        args = ["--status", status[0]] if status else []
        return {c["id"] for c in cli.json("contacts", "list", *args)}

    everyone = {c["id"] for c in contacts}
    assert ids("inactive") == {gone_in_ghl["id"]}
    assert ids("deleted") == {deleted_here["id"]}
    assert ids("active") == everyone - {gone_in_ghl["id"], deleted_here["id"]}
    assert ids() == everyone  # every status by default
    for status in ("active", "inactive", "deleted"):
        assert all(c["status"] == status for c in cli.json("contacts", "list", "--status", status))

    bad = cli("contacts", "list", "--status", "archived", "--json")
    assert bad.exit_code == 2, bad.output
    assert bad.stdout == ""
    assert "Unknown status 'archived'" in bad.stderr
    assert "active, inactive or deleted" in bad.stderr


def test_contacts_show_json_is_the_contract_contact(cli: Cli, sandbox: Sandbox) -> None:
    contacts = synced(cli, sandbox, 5, seed=34)

    for contact in contacts:
        shown = cli.json("contacts", "show", contact["id"])
        assert_contract_contact(shown)
        assert shown == contact


def test_contacts_show_human_output_goes_to_stdout(cli: Cli, sandbox: Sandbox) -> None:
    contact = synced(cli, sandbox, 3, seed=35)[0]

    result = cli("contacts", "show", contact["id"])

    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    for key in CONTACT_KEYS:
        assert any(line.split()[:1] == [key] for line in lines), key
    assert contact["ghl_id"] in result.stdout
    if contact["email"]:
        assert contact["email"] in result.stdout


@pytest.mark.parametrize("as_json", [False, True])
def test_contacts_show_unknown_exits_65(cli: Cli, sandbox: Sandbox, as_json: bool) -> None:
    cli.connect()

    result = cli("contacts", "show", "nosuchcontact", *(["--json"] if as_json else []))

    assert result.exit_code == 65, result.output
    assert result.stdout == ""
    assert "Error: No contact with id 'nosuchcontact'." in result.stderr
    assert "Hint: List ids with: ghlsync contacts list" in result.stderr


def test_contacts_list_human_output_goes_to_stdout_and_the_count_to_stderr(
    cli: Cli, sandbox: Sandbox
) -> None:
    contacts = synced(cli, sandbox, 6, seed=36)

    result = cli("contacts", "list")

    assert result.exit_code == 0, result.output
    for contact in contacts:
        assert contact["id"] in result.stdout
        assert contact["ghl_id"] in result.stdout
    assert result.stderr.strip() == "6 contacts."


def test_status_json_shape(cli: Cli, sandbox: Sandbox) -> None:
    sandbox.seed(25, seed=37)
    cli.connect()
    report = cli.json("initial-sync")

    status = cli.json("status")

    assert set(status) == {"db", "locations"}
    (location,) = status["locations"]
    assert set(location) == {
        "location_id",
        "connected",
        "connected_at",
        "token",
        "contacts",
        "cursor",
        "last_runs",
        "pushes",
        "failed_pushes",
        "conflicts",
        "flagged",
        "inbox_backlog",
    }
    assert location["location_id"] == DEFAULT_LOCATION_ID
    assert location["connected"] is True
    assert location["token"] == {"kind": "env", "source": "env", "expires_at": None}
    assert location["contacts"] == {"active": 25, "inactive": 0, "deleted": 0}
    assert location["cursor"] == {
        "high_water": report["high_water"],
        "initial_sync_complete": True,
        "initial_sync_fetched": 25,
    }
    assert ISO_UTC.match(location["cursor"]["high_water"])
    run = location["last_runs"]["initial-sync"]
    assert set(run) == {"started_at", "finished_at", "outcome", "counts", "error"}
    assert run["outcome"] == "ok"
    assert run["error"] is None
    assert run["started_at"] <= run["finished_at"]
    assert run["counts"]["created"] == 25
    assert run["counts"]["pages"] == 1
    assert (location["pushes"], location["failed_pushes"]) == ({"queued": 0, "failed": 0}, [])
    assert (location["conflicts"], location["flagged"], location["inbox_backlog"]) == (0, 0, 0)

    sandbox.ui_update_contact(sandbox.list_contacts()[0]["id"], {"city": "Austin"})
    cli.json("reconcile")

    status = cli.json("status")
    (location,) = status["locations"]
    assert set(location["last_runs"]) == {"initial-sync", "reconcile"}
    assert location["last_runs"]["reconcile"]["outcome"] == "ok"
    assert location["cursor"]["high_water"] > report["high_water"]


def test_status_counts_by_status_and_queued_pushes(cli: Cli, sandbox: Sandbox) -> None:
    contacts = synced(cli, sandbox, 10, seed=38)
    deleted = cli("contacts", "delete", contacts[0]["id"], "--yes")
    assert deleted.exit_code == 0, deleted.output
    # Another program edits a contact while GHL is down: the change waits in the queue.
    conn = sqlite3.connect(cli.db)
    with conn:
        conn.execute("UPDATE contacts SET city = 'Lisbon' WHERE id = ?", (contacts[1]["id"],))
    conn.close()

    (location,) = cli.json("status")["locations"]

    assert location["contacts"] == {"active": 9, "inactive": 0, "deleted": 1}
    assert location["pushes"] == {"queued": 1, "failed": 0}


def test_status_human_output(cli: Cli, sandbox: Sandbox) -> None:
    empty = cli("status")
    assert empty.exit_code == 0, empty.output
    assert "No location is connected. Run: ghlsync connect" in empty.stderr
    assert empty.stdout == ""
    synced(cli, sandbox, 4, seed=39)

    result = cli("status")

    assert result.exit_code == 0, result.output
    assert f"Location {DEFAULT_LOCATION_ID}" in result.stdout
    assert "active 4, inactive 0, deleted 0" in result.stdout
    assert "last initial-sync" in result.stdout
    assert result.stderr == ""


def test_json_stdout_parses_while_errors_go_to_stderr(cli: Cli, sandbox: Sandbox) -> None:
    sandbox.seed(8, seed=40)
    cli.connect()
    # A contact added by another program, to be pushed; GHL refuses every push attempt.
    conn = sqlite3.connect(cli.db)
    with conn:
        conn.execute(
            "INSERT INTO contacts (location_id, first_name, email) VALUES (?, 'Ada', ?)",
            (DEFAULT_LOCATION_ID, "ada@example.com"),
        )
    conn.close()
    sandbox.faults.set_rules(
        [FaultRule(path_regex="^/contacts/upsert$", mode="status", status=503)]
    )

    # A real process, so the streams are the real ones.
    result = cli.run("initial-sync", "--json", timeout=30)

    assert result.returncode == 75, result.stderr
    report = json.loads(result.stdout)
    assert report["pull"]["created"] == 8
    assert report["push"]["queued"] == 1
    assert "503" in report["push_error"]
    assert "Error: Pulled, but GHL could not be reached to push" in result.stderr
    assert "Hint: They will be sent by: ghlsync push --pending" in result.stderr
    (location,) = cli.json("status")["locations"]
    assert location["pushes"] == {"queued": 1, "failed": 0}
    assert location["last_runs"]["initial-sync"]["outcome"] == "queued"
