"""A first walk through the CLI against the sandbox: connect, initial-sync, list, show."""

from __future__ import annotations

from ghlsync_cli.sandbox import Sandbox
from tests.helpers import Cli, contact_rows


def test_connect_initial_sync_and_list(cli: Cli, sandbox: Sandbox) -> None:
    sandbox.seed(30, seed=3)
    cli.connect()
    report = cli.json("initial-sync")
    assert report["pull"]["created"] == 30
    rows = cli.json("contacts", "list")
    assert len(rows) == 30 == len(contact_rows(cli.db))
    shown = cli.json("contacts", "show", rows[0]["id"])
    assert shown == rows[0]
    assert set(shown) == {
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
