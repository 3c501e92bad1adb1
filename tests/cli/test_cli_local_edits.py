"""The local side as a real peer: edits reach GHL, GHL's changes land, nothing is silently lost."""

from __future__ import annotations

import json
import os
import pty
import sqlite3
from typing import Any

import pytest

from ghlsync_cli.crashpoints import ENV as CRASH_ENV
from ghlsync_cli.sandbox import FaultRule, Sandbox
from tests.helpers import Cli, contact_rows

DOWN = "http://127.0.0.1:9"  # nothing listens there: GHL unreachable


def ghl_contacts(sandbox: Sandbox) -> list[dict[str, Any]]:
    return sandbox.list_contacts()


def requests(sandbox: Sandbox, route: str) -> int:
    return sandbox.stats.requests(route)


def local(cli: Cli, contact_id: str) -> dict[str, Any]:
    data: dict[str, Any] = cli.json("contacts", "show", contact_id)
    return data


def edit_as_another_program(cli: Cli, contact_id: str, **values: str | None) -> None:
    """One plain ``UPDATE`` of the contacts row, committed, as another program writes it."""
    columns = ", ".join(f"{name} = ?" for name in values)
    conn = sqlite3.connect(cli.db)
    with conn:
        conn.execute(f"UPDATE contacts SET {columns} WHERE id = ?", (*values.values(), contact_id))
    conn.close()


def add_then_crash_after_create(cli: Cli, *options: str) -> None:
    """``contacts add OPTIONS``, killed after GHL answered the create, before the link commits."""
    crashed = cli.run("contacts", "add", *options, **{CRASH_ENV: "after-create-response"})
    assert crashed.returncode == 137, crashed.stderr


def synced(cli: Cli, sandbox: Sandbox, count: int = 0) -> None:
    if count:
        sandbox.seed(count, seed=7)
    cli.connect()
    assert cli("initial-sync").exit_code == 0


def test_add_pushes_at_once_and_links(cli: Cli, sandbox: Sandbox) -> None:
    synced(cli, sandbox)
    row = cli.json(
        "contacts",
        "add",
        "--first-name",
        "Mary Ann",
        "--last-name",
        "Smith",
        "--email",
        "mary@example.com",
        "--phone",
        "(415) 555-0132",
        "--tag",
        "VIP",
    )
    assert row["ghl_id"] and row["phone"] == "+14155550132" and row["tags"] == ["vip"]
    [remote] = ghl_contacts(sandbox)
    assert remote["id"] == row["ghl_id"]
    assert (remote["firstName"], remote["lastName"]) == ("Mary Ann", "Smith")
    assert remote["tags"] == ["vip"]
    status = cli.json("status")["locations"][0]
    assert status["pushes"] == {"queued": 0, "failed": 0}


def test_mary_ann_smith_survives_a_round_trip_unchanged(cli: Cli, sandbox: Sandbox) -> None:
    synced(cli, sandbox)
    row = cli.json("contacts", "add", "--first-name", "Mary Ann", "--last-name", "Smith")
    assert cli("reconcile", "--full").exit_code == 0
    again = local(cli, row["id"])
    assert (again["first_name"], again["last_name"], again["name"]) == (
        "Mary Ann",
        "Smith",
        "Mary Ann Smith",
    )
    assert cli.json("conflicts", "list") == []


def test_email_case_does_not_duplicate(cli: Cli, sandbox: Sandbox) -> None:
    cli.connect()
    offline = cli(
        "contacts",
        "add",
        "--first-name",
        "Ann",
        "--email",
        "Ann.Lee@Example.com",
        "--json",
        GHLSYNC_API_BASE=DOWN,
    )
    assert offline.exit_code == 75
    row = json.loads(offline.stdout)
    # GHL already has the same person, the email typed in another case.
    sandbox.ui_create_contact({"firstName": "Ann", "email": "ann.lee@example.com"})
    sandbox.stats.reset()
    assert cli("initial-sync").exit_code == 0
    rows = contact_rows(cli.db)
    assert len(rows) == 1 and len(ghl_contacts(sandbox)) == 1
    assert rows[0]["id"] == row["id"] and rows[0]["ghl_id"] == ghl_contacts(sandbox)[0]["id"]


def test_phone_format_does_not_duplicate(cli: Cli, sandbox: Sandbox) -> None:
    sandbox.ui_create_contact({"firstName": "Bo", "phone": "+14155550132"})
    cli.connect()
    offline = cli(
        "contacts", "add", "--first-name", "Bo", "--phone", "(415) 555-0132", GHLSYNC_API_BASE=DOWN
    )
    assert offline.exit_code == 75
    assert cli("initial-sync").exit_code == 0
    assert len(contact_rows(cli.db)) == 1
    assert len(ghl_contacts(sandbox)) == 1


def test_echo_after_push_changes_nothing(cli: Cli, sandbox: Sandbox) -> None:
    synced(cli, sandbox, 5)
    target = cli.json("contacts", "list")[0]
    sandbox.stats.reset()
    cli.json("contacts", "update", target["id"], "--city", "Lisbon", "--add-tag", "moved")
    assert requests(sandbox, "PUT /contacts/{contactId}") == 1
    # GHL's copy now changed (dateUpdated moved): a reconcile sees it, which is the echo.
    assert cli("reconcile").exit_code == 0
    assert cli("reconcile").exit_code == 0
    assert requests(sandbox, "PUT /contacts/{contactId}") == 1
    assert cli.json("conflicts", "list") == []
    assert local(cli, target["id"])["city"] == "Lisbon"


def test_both_changed_ghl_wins_and_conflict_keeps_both(cli: Cli, sandbox: Sandbox) -> None:
    synced(cli, sandbox, 3)
    target = cli.json("contacts", "list")[0]
    # Local edit made while offline (left queued), then GHL changes the same field.
    result = cli(
        "contacts",
        "update",
        target["id"],
        "--company",
        "Local Co",
        GHLSYNC_API_BASE=DOWN,
    )
    assert result.exit_code == 75, result.output
    assert "queued" in result.stderr
    sandbox.ui_update_contact(target["ghl_id"], {"companyName": "Remote Co"})
    assert cli("reconcile").exit_code == 0
    assert local(cli, target["id"])["company"] == "Remote Co"
    [conflict] = cli.json("conflicts", "list")
    assert conflict["field"] == "company"
    assert (conflict["local_value"], conflict["ghl_value"]) == ("Local Co", "Remote Co")
    assert conflict["contact_id"] == target["id"] and conflict["detected_at"]
    assert sandbox.find_contact(target["ghl_id"])["companyName"] == "Remote Co"


@pytest.mark.parametrize("route", ["contacts update", "another program, then push --pending"])
def test_a_push_never_overwrites_what_ghl_changed_since_the_last_sync(
    cli: Cli, sandbox: Sandbox, route: str
) -> None:
    synced(cli, sandbox, 3)
    target = cli.json("contacts", "list")[0]
    # GHL changes the contact and no webhook or pull brings it here; then a local edit.
    sandbox.ui_update_contact(target["ghl_id"], {"companyName": "Remote Co", "city": "Houston"})
    edits = {"company": "Local Co", "email": "moved@example.com"}
    if route == "contacts update":
        result = cli(
            "contacts", "update", target["id"], "--company", "Local Co", "--email", edits["email"]
        )
        assert result.exit_code == 0, result.output
    else:
        edit_as_another_program(cli, target["id"], **edits)
        assert cli.json("push", "--pending")["updated"] == 1

    remote = sandbox.find_contact(target["ghl_id"])
    # Changed on both sides: GHL's value stays, and the conflict keeps both.
    assert remote["companyName"] == "Remote Co"
    [conflict] = cli.json("conflicts", "list")
    assert (conflict["field"], conflict["local_value"], conflict["ghl_value"]) == (
        "company",
        "Local Co",
        "Remote Co",
    )
    # Changed on one side each: both land.
    assert (remote["email"], remote["city"]) == ("moved@example.com", "Houston")
    row = local(cli, target["id"])
    assert (row["company"], row["email"], row["city"]) == (
        "Remote Co",
        "moved@example.com",
        "Houston",
    )
    assert cli.json("status")["locations"][0]["pushes"] == {"queued": 0, "failed": 0}


def test_one_side_each_merges(cli: Cli, sandbox: Sandbox) -> None:
    synced(cli, sandbox, 3)
    target = cli.json("contacts", "list")[0]
    cli("contacts", "update", target["id"], "--city", "Porto", GHLSYNC_API_BASE=DOWN)
    sandbox.ui_update_contact(target["ghl_id"], {"companyName": "Remote Co"})
    assert cli("reconcile").exit_code == 0
    row = local(cli, target["id"])
    assert (row["city"], row["company"]) == ("Porto", "Remote Co")
    remote = sandbox.find_contact(target["ghl_id"])
    assert (remote["city"], remote["companyName"]) == ("Porto", "Remote Co")
    assert cli.json("conflicts", "list") == []


def test_unreachable_ghl_keeps_the_change_queued_then_push_pending(
    cli: Cli, sandbox: Sandbox
) -> None:
    synced(cli, sandbox)
    result = cli(
        "contacts",
        "add",
        "--first-name",
        "Queued",
        "--email",
        "q@example.com",
        GHLSYNC_API_BASE=DOWN,
    )
    assert result.exit_code == 75
    assert "queued" in result.stderr.lower()
    assert ghl_contacts(sandbox) == []
    assert cli.json("status")["locations"][0]["pushes"]["queued"] == 1
    pushed = cli.json("push", "--pending")
    assert pushed["created"] == 1 and pushed["queued"] == 0
    assert [c["email"] for c in ghl_contacts(sandbox)] == ["q@example.com"]


def test_a_change_written_by_another_program_is_pushed(cli: Cli, sandbox: Sandbox) -> None:
    synced(cli, sandbox, 3)
    target = cli.json("contacts", "list")[0]
    conn = sqlite3.connect(cli.db)
    with conn:
        conn.execute(
            "UPDATE contacts SET email = ? WHERE id = ?", ("agent@example.com", target["id"])
        )
        conn.execute(
            "INSERT INTO contacts (location_id, first_name, phone) "
            "VALUES (?, 'Inserted', '(212) 555-0100')",
            (target["location_id"],),
        )
    conn.close()
    pushed = cli.json("push", "--pending")
    assert (pushed["updated"], pushed["created"]) == (1, 1)
    assert sandbox.find_contact(target["ghl_id"])["email"] == "agent@example.com"
    inserted = [c for c in ghl_contacts(sandbox) if c.get("firstName") == "Inserted"]
    assert len(inserted) == 1 and inserted[0]["phone"] == "+12125550100"
    rows = {r["first_name"]: r for r in contact_rows(cli.db)}
    assert rows["Inserted"]["ghl_id"] == inserted[0]["id"]
    assert rows["Inserted"]["phone"] == "+12125550100"


def test_delete_is_a_tombstone_that_survives_a_full_reconcile(cli: Cli, sandbox: Sandbox) -> None:
    synced(cli, sandbox, 4)
    target = cli.json("contacts", "list")[0]
    deleted = cli.json("contacts", "delete", target["id"], "--yes")
    assert deleted["status"] == "deleted"
    sandbox.ui_update_contact(target["ghl_id"], {"city": "Changed in GHL"})
    for args in (("reconcile",), ("reconcile", "--full"), ("initial-sync",)):
        assert cli(*args).exit_code == 0
    row = local(cli, target["id"])
    assert row["status"] == "deleted"
    assert sandbox.find_contact(target["ghl_id"]) is not None  # never deleted in GHL
    assert len(contact_rows(cli.db)) == 4


def test_another_program_deleting_a_row_leaves_a_tombstone(cli: Cli, sandbox: Sandbox) -> None:
    synced(cli, sandbox, 2)
    target = cli.json("contacts", "list")[0]
    conn = sqlite3.connect(cli.db)
    with conn:
        conn.execute("DELETE FROM contacts WHERE id = ?", (target["id"],))
    conn.close()
    assert cli("reconcile", "--full").exit_code == 0
    assert local(cli, target["id"])["status"] == "deleted"
    assert len(contact_rows(cli.db)) == 2


@pytest.mark.parametrize(("option", "value"), [("--email", "not-an-email"), ("--phone", "12345")])
def test_invalid_input_writes_nothing(cli: Cli, sandbox: Sandbox, option: str, value: str) -> None:
    cli.connect()
    result = cli("contacts", "add", "--first-name", "X", option, value)
    assert result.exit_code == 65
    assert "Invalid" in result.stderr
    assert contact_rows(cli.db) == []


def test_permanent_error_is_recorded_and_does_not_block_others(cli: Cli, sandbox: Sandbox) -> None:
    synced(cli, sandbox, 2)
    first, second = cli.json("contacts", "list")
    conn = sqlite3.connect(cli.db)
    with conn:  # bypasses ghlsync's validation, as another program could
        conn.execute("UPDATE contacts SET email = 'broken email' WHERE id = ?", (first["id"],))
        conn.execute("UPDATE contacts SET city = 'Oslo' WHERE id = ?", (second["id"],))
    conn.close()
    pushed = cli.json("push", "--pending")
    assert (pushed["failed"], pushed["updated"]) == (1, 1)
    assert sandbox.find_contact(second["ghl_id"])["city"] == "Oslo"
    status = cli.json("status")["locations"][0]
    assert status["pushes"]["failed"] == 1
    assert status["failed_pushes"][0]["contact_id"] == first["id"]
    # Parked until the contact changes again: the next push does not retry it.
    again = cli.json("push", "--pending")
    assert again["failed"] == 0


@pytest.mark.parametrize("key", ["email", "phone"])
def test_a_create_ghl_would_match_to_an_already_linked_contact_is_a_failed_push(
    cli: Cli, sandbox: Sandbox, key: str
) -> None:
    synced(cli, sandbox, 1)
    [linked] = cli.json("contacts", "list")
    [before] = ghl_contacts(sandbox)
    conn = sqlite3.connect(cli.db)
    with conn:  # another program adds a second local row with the same email (or phone)
        conn.execute(
            f"INSERT INTO contacts (location_id, first_name, city, {key}) "
            "VALUES (?, 'Twin', 'Elsewhere', ?)",
            (linked["location_id"], linked[key].upper()),
        )
    conn.close()
    [twin] = [r for r in contact_rows(cli.db) if r["first_name"] == "Twin"]
    sandbox.stats.reset()

    pushed = cli.json("push", "--pending")

    assert (pushed["created"], pushed["unchanged"], pushed["failed"]) == (0, 0, 1)
    assert pushed["errors"] == [
        {"contact_id": twin["id"], "error": f"duplicate of local contact {linked['id']} in GHL"}
    ]
    # GHL's upsert would have matched and overwritten that contact: nothing was sent.
    assert sandbox.stats.snapshot()["total"] == 0
    assert ghl_contacts(sandbox) == [before]
    assert local(cli, twin["id"])["ghl_id"] is None  # never linked to another row's GHL id
    status = cli.json("status")["locations"][0]
    assert [f["contact_id"] for f in status["failed_pushes"]] == [twin["id"]]


def test_crash_after_create_answer_makes_no_second_ghl_contact(cli: Cli, sandbox: Sandbox) -> None:
    synced(cli, sandbox)
    add_then_crash_after_create(cli, "--first-name", "Once", "--email", "once@example.com")
    assert len(ghl_contacts(sandbox)) == 1  # GHL created it; the link was never committed
    assert contact_rows(cli.db)[0]["ghl_id"] is None
    assert cli.json("push", "--pending")["created"] == 1
    assert len(ghl_contacts(sandbox)) == 1
    assert contact_rows(cli.db)[0]["ghl_id"] == ghl_contacts(sandbox)[0]["id"]


def test_crash_after_create_without_email_or_phone_is_found_by_name(
    cli: Cli, sandbox: Sandbox
) -> None:
    synced(cli, sandbox)
    add_then_crash_after_create(cli, "--first-name", "Nameonly", "--last-name", "Person")
    assert cli.json("push", "--pending")["created"] == 1
    remote = ghl_contacts(sandbox)
    assert len(remote) == 1
    assert contact_rows(cli.db)[0]["ghl_id"] == remote[0]["id"]


@pytest.mark.parametrize("email", ["first@example.com", None], ids=["email", "no email or phone"])
@pytest.mark.parametrize("edit", ["contacts update", "another program, then reconcile"])
def test_a_contact_edited_after_an_interrupted_create_is_not_created_twice(
    cli: Cli, sandbox: Sandbox, email: str | None, edit: str
) -> None:
    synced(cli, sandbox)
    given = ["--email", email] if email else []
    add_then_crash_after_create(cli, "--first-name", "Solo", *given)
    [row] = contact_rows(cli.db)
    # Edited before the create is retried, the key it could be found by included.
    edits = {"city": "Paris", **({"email": "second@example.com"} if email else {})}
    if edit == "contacts update":
        options = [item for name, value in edits.items() for item in (f"--{name}", value)]
        result = cli("contacts", "update", row["id"], *options)
        assert result.exit_code == 0, result.output
    else:
        edit_as_another_program(cli, row["id"], **edits)
        assert cli("reconcile").exit_code == 0  # pulls GHL's copy first, then pushes the edit

    [remote] = ghl_contacts(sandbox)
    assert (remote["city"], remote.get("email")) == ("Paris", edits.get("email"))
    [again] = contact_rows(cli.db)
    assert (again["ghl_id"], again["city"]) == (remote["id"], "Paris")
    assert cli.json("status")["locations"][0]["pushes"] == {"queued": 0, "failed": 0}
    assert cli.json("conflicts", "list") == []


def test_a_create_interrupted_under_the_previous_schema_is_still_found_once(
    cli: Cli, sandbox: Sandbox
) -> None:
    synced(cli, sandbox)
    add_then_crash_after_create(cli, "--first-name", "Old", "--email", "old@example.com")
    conn = sqlite3.connect(cli.db)
    with conn:  # the file as the version before m003 left it: no record of what was sent
        conn.execute("ALTER TABLE outbox DROP COLUMN create_values")
        conn.execute("DELETE FROM _sqlite_migrations WHERE name = 'm003_outbox_create_values'")
    conn.close()

    assert cli.json("push", "--pending")["created"] == 1  # migrates, then finds it by email

    [remote] = ghl_contacts(sandbox)
    assert contact_rows(cli.db)[0]["ghl_id"] == remote["id"]
    conn = sqlite3.connect(cli.db)
    columns = [r[1] for r in conn.execute("PRAGMA table_info(outbox)")]
    conn.close()
    assert "create_values" in columns


def test_update_and_delete_unknown_contact_exit_65(cli: Cli, sandbox: Sandbox) -> None:
    cli.connect()
    assert cli("contacts", "update", "nope", "--city", "X").exit_code == 65
    assert cli("contacts", "delete", "nope", "--yes").exit_code == 65
    assert cli("push", "nope").exit_code == 65


def test_json_of_add_is_the_contract_contact(cli: Cli, sandbox: Sandbox) -> None:
    cli.connect()
    row = cli.json("contacts", "add", "--name", "Jo Ann Doe", "--tag", "b", "--tag", "A")
    assert (row["first_name"], row["last_name"]) == ("Jo", "Ann Doe")
    assert row["tags"] == ["a", "b"] and row["status"] == "active" and row["dnd"] is False
    assert json.loads(json.dumps(row)) == local(cli, row["id"])


# ---- what a push that cannot finish leaves, and says -----------------------------------------

UPSERT = "^/contacts/upsert$"


def test_a_refused_token_still_prints_the_saved_contact(cli: Cli, sandbox: Sandbox) -> None:
    synced(cli, sandbox)

    result = cli(
        "contacts", "add", "--first-name", "NoTok", "--json", GHLSYNC_TOKEN="not-a-valid-token"
    )

    assert result.exit_code == 77, result.output
    printed = json.loads(result.stdout)
    assert printed == local(cli, printed["id"]) and printed["ghl_id"] is None
    assert f"Saved locally as {printed['id']}; the change is queued for GHL." in result.stderr
    assert cli.json("status")["locations"][0]["pushes"]["queued"] == 1


def test_a_contact_ghl_refuses_is_exit_65_with_the_contact_kept(cli: Cli, sandbox: Sandbox) -> None:
    synced(cli, sandbox)
    sandbox.faults.set_rules([FaultRule(path_regex=UPSERT, mode="status", status=422, count=1)])

    result = cli("contacts", "add", "--first-name", "Refused", "--json")

    assert result.exit_code == 65, result.output
    printed = json.loads(result.stdout)
    assert printed == local(cli, printed["id"]) and printed["ghl_id"] is None
    assert f"Saved locally as {printed['id']}, but GHL refused it:" in result.stderr
    assert f"ghlsync contacts update {printed['id']}" in result.stderr
    failed = cli.json("status")["locations"][0]["failed_pushes"]
    assert [f["contact_id"] for f in failed] == [printed["id"]]


def test_add_for_a_disconnected_location_is_kept_and_pushed_after_reconnecting(
    cli: Cli, sandbox: Sandbox
) -> None:
    synced(cli, sandbox)
    assert cli("disconnect").exit_code == 0

    row = cli.json("contacts", "add", "--first-name", "Later", GHLSYNC_LOCATION=cli.location_id)

    assert row["ghl_id"] is None and sandbox.stats.requests("POST /contacts/upsert") == 0
    cli.connect()
    assert cli("reconcile").exit_code == 0
    [remote] = ghl_contacts(sandbox)
    assert remote["firstName"] == "Later" and local(cli, row["id"])["ghl_id"] == remote["id"]
    unknown = cli("--location", "neverConnected", "contacts", "add", "--first-name", "X")
    assert unknown.exit_code == 78, unknown.output


def test_declining_the_delete_prompt_deletes_nothing_and_exits_0(
    cli: Cli, sandbox: Sandbox
) -> None:
    synced(cli, sandbox, 1)
    [target] = cli.json("contacts", "list")
    main, terminal = pty.openpty()  # the prompt is asked only on a terminal
    try:
        with cli.spawn("contacts", "delete", target["id"], stdin=terminal) as proc:
            os.write(main, b"n\n")
            _, stderr = proc.communicate(timeout=60)
    finally:
        os.close(main)
        os.close(terminal)

    assert proc.returncode == 0, stderr
    assert "Nothing deleted." in stderr
    assert local(cli, target["id"])["status"] == "active"


def test_another_program_editing_only_a_name_part_is_pushed_not_reverted(
    cli: Cli, sandbox: Sandbox
) -> None:
    synced(cli, sandbox)
    row = cli.json("contacts", "add", "--first-name", "Mary Ann", "--last-name", "Smith")
    edit_as_another_program(cli, row["id"], first_name="Marianne")  # name left as it was

    assert cli.json("push", "--pending")["updated"] == 1
    remote = sandbox.find_contact(row["ghl_id"])
    assert (remote["firstName"], remote["lastName"]) == ("Marianne", "Smith")
    again = local(cli, row["id"])
    assert (again["first_name"], again["last_name"], again["name"]) == (
        "Marianne",
        "Smith",
        "Marianne Smith",
    )

    edit_as_another_program(cli, row["id"], last_name=None)
    assert cli("reconcile").exit_code == 0
    assert "lastName" not in sandbox.find_contact(row["ghl_id"])
    assert local(cli, row["id"])["name"] == "Marianne"
