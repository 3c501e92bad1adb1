"""``ghlsync replay-webhook``: saved GHL bodies through the same pipeline ``serve`` uses."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from ghlsync_cli.errors import StorageError
from ghlsync_cli.sandbox import WEBHOOK_PUBLIC_KEY_PATH, Sandbox, SandboxServer, sign_body
from ghlsync_cli.sync import inbox
from tests.helpers import Cli
from tests.webhooks.support import dump, rows

EXAMPLES = Path("/work/shared/ghl-api/webhook-events")
GHL_LOCATION = "ve9EPM428h8vShlRW1KT"
GHL_ID = "nmFmQEsNgz6AVpgLVUJ0"
# GHL's example bodies in the order they would happen to one contact.
IN_ORDER = [
    ("AppInstall-agency.json", "INSTALL", "logged"),
    ("AppInstall-location-non-whitelabeled.json", "INSTALL", "logged"),
    ("AppInstall-location-whitelabeled.json", "INSTALL", "logged"),
    ("AppUninstall-agency.json", "UNINSTALL", "skipped: no locationId"),
    (
        "AppUninstall-location.json",
        "UNINSTALL",
        "skipped: location otg8dTQqGLh3Q6iQI55w not connected",
    ),
    ("ContactCreate.json", "ContactCreate", "created"),
    ("ContactUpdate.json", "ContactUpdate", "unchanged"),
    # Only dndSettings is new: kept in the raw column, not reported as a change.
    ("ContactDndUpdate.json", "ContactDndUpdate", "unchanged"),
    ("ContactTagUpdate.json", "ContactTagUpdate", "unchanged"),
    ("ContactDelete.json", "ContactDelete", "soft_deleted"),
]
EXIT_DATAERR = 65
# Human output: source, type, GHL id and outcome per event, in columns.
LINE = re.compile(r"^(\S+)\s+(\S+)\s+(\S+)\s+(.+?)\s*$")


@pytest.fixture
def ghl(sandbox: Sandbox, sandbox_server: SandboxServer, tmp_path: Path) -> Cli:
    """The CLI with the location of GHL's example bodies connected."""
    sandbox.add_location(GHL_LOCATION, "sandbox-token-2")
    cli = Cli(
        db=tmp_path / "ghlsync.db",
        api_base=sandbox_server.url,
        token="sandbox-token-2",
        location_id=GHL_LOCATION,
    )
    cli.connect()
    return cli


def example(name: str) -> dict[str, Any]:
    """One of GHL's documented example bodies."""
    return json.loads((EXAMPLES / name).read_text())


def write(path: Path, text: str | bytes) -> str:
    """Save a replay file; returns its name for the command line."""
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(text)
    return str(path)


def columns(stdout: str) -> list[tuple[str, ...]]:
    """The human output's lines as (source, type, GHL id, outcome)."""
    found = [LINE.match(line) for line in stdout.splitlines()]
    assert all(found), stdout
    return [m.groups() for m in found if m]


def nothing_applied(db: Path) -> bool:
    """No body stored, no contact touched."""
    return rows(db, "inbox") == [] and rows(db, "contacts") == []


def test_every_ghl_example_body_gets_its_outcome(ghl: Cli) -> None:
    files = [str(EXAMPLES / name) for name, _, _ in IN_ORDER]
    result = ghl("replay-webhook", *files)
    assert result.exit_code == 0, result.output

    lines = columns(result.stdout)
    assert [(source, kind, outcome) for source, kind, _, outcome in lines] == [
        (f"{EXAMPLES / name}#1", kind, outcome) for name, kind, outcome in IN_ORDER
    ]
    assert {ghl_id for _, kind, ghl_id, _ in lines if kind.startswith("Contact")} == {GHL_ID}

    [row] = rows(ghl.db, "contacts")
    shown = ghl.json("contacts", "show", row["id"])
    assert shown["status"] == "inactive"  # ContactDelete keeps the data
    assert (shown["ghl_id"], shown["email"], shown["phone"], shown["city"]) == (
        GHL_ID,
        "JohnDeo@gmail.comm",
        "+919509597501",
        "ruDolomitebika",
    )
    # GHL keeps tags lower-case; so does the local copy.
    assert shown["tags"] == sorted(t.lower() for t in example("ContactCreate.json")["tags"])


def test_outcomes_in_json_including_a_real_update(ghl: Cli, tmp_path: Path) -> None:
    moved = {**example("ContactUpdate.json"), "city": "Indore"}
    files = [
        str(EXAMPLES / "ContactCreate.json"),
        write(tmp_path / "moved.json", json.dumps(moved)),
        str(EXAMPLES / "AppUninstall-location.json"),
    ]
    report = ghl.json("replay-webhook", *files)

    [created, updated, skipped] = report["events"]
    contact_id = rows(ghl.db, "contacts")[0]["id"]
    assert created == {
        "source": files[0] + "#1",
        "type": "ContactCreate",
        "location_id": GHL_LOCATION,
        "ghl_id": GHL_ID,
        "contact_id": contact_id,
        "duplicate": False,
        "outcome": "created",
    }
    assert (updated["outcome"], updated["contact_id"]) == ("updated", contact_id)
    assert skipped["outcome"] == "skipped: location otg8dTQqGLh3Q6iQI55w not connected"
    assert ghl.json("contacts", "show", contact_id)["city"] == "Indore"


def test_replaying_the_same_files_twice_changes_nothing(ghl: Cli) -> None:
    files = [str(EXAMPLES / name) for name, _, _ in IN_ORDER]
    first = ghl.json("replay-webhook", *files)
    before = dump(ghl.db)

    second = ghl.json("replay-webhook", *files)
    assert dump(ghl.db) == before
    assert [e["duplicate"] for e in first["events"]] == [False] * len(files)
    assert [(e["duplicate"], e["outcome"]) for e in second["events"]] == [
        (True, "unchanged")
    ] * len(files)

    human = ghl("replay-webhook", *files)
    assert human.exit_code == 0, human.output
    outcomes = [outcome for *_, outcome in columns(human.stdout)]
    assert outcomes == ["unchanged (already received)"] * len(files), human.stdout
    assert dump(ghl.db) == before


def test_a_json_array_file(ghl: Cli, tmp_path: Path) -> None:
    bodies = [example("ContactCreate.json"), example("ContactDelete.json")]
    name = write(tmp_path / "events.json", json.dumps(bodies, indent=2))
    report = ghl.json("replay-webhook", name)
    assert [(e["source"], e["outcome"]) for e in report["events"]] == [
        (f"{name}#1", "created"),
        (f"{name}#2", "soft_deleted"),
    ]


def test_a_json_lines_file(ghl: Cli, tmp_path: Path) -> None:
    lines = [example("ContactCreate.json"), {**example("ContactUpdate.json"), "city": "Pune"}]
    name = write(tmp_path / "events.jsonl", "\n".join(json.dumps(b) for b in lines) + "\n\n")
    report = ghl.json("replay-webhook", name)
    assert [e["outcome"] for e in report["events"]] == ["created", "updated"]
    assert rows(ghl.db, "contacts")[0]["city"] == "Pune"


def test_a_json_line_may_hold_unicode_line_separators_in_its_strings(
    ghl: Cli, tmp_path: Path
) -> None:
    # Valid JSON may carry U+2028, U+2029 and U+0085 unescaped: they do not end a line.
    city = "Pune\u2028West\u0085Side\u2029"
    lines = [example("ContactCreate.json"), {**example("ContactUpdate.json"), "city": city}]
    text = "\n".join(json.dumps(b, ensure_ascii=False) for b in lines)
    report = ghl.json("replay-webhook", write(tmp_path / "events.jsonl", text))
    assert [e["outcome"] for e in report["events"]] == ["created", "updated"]
    assert rows(ghl.db, "contacts")[0]["city"] == city.strip()


def test_duplicates_within_a_file_and_across_replays(ghl: Cli, tmp_path: Path) -> None:
    create = example("ContactCreate.json")
    pune = {**example("ContactUpdate.json"), "city": "Pune"}
    first = write(
        tmp_path / "first.jsonl", "\n".join(json.dumps(b) for b in (create, pune, create))
    )
    report = ghl.json("replay-webhook", first)
    assert [(e["duplicate"], e["outcome"]) for e in report["events"]] == [
        (False, "created"),
        (False, "updated"),
        (True, "unchanged"),
    ]
    goa = {**pune, "city": "Goa"}
    second = write(tmp_path / "second.jsonl", "\n".join(json.dumps(b) for b in (pune, goa, goa)))
    report = ghl.json("replay-webhook", second)
    assert [(e["duplicate"], e["outcome"]) for e in report["events"]] == [
        (True, "unchanged"),
        (False, "updated"),
        (True, "unchanged"),
    ]
    assert len(rows(ghl.db, "inbox")) == 3
    assert rows(ghl.db, "contacts")[0]["city"] == "Goa"


def test_a_file_longer_than_one_transaction_applies_in_order(
    ghl: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Bodies are stored and applied a few at a time (each batch in one transaction): events of
    # one contact that straddle two batches still apply in the file's order.
    monkeypatch.setattr("ghlsync_cli.sync.replay.REPLAY_CHUNK", 2)
    cities = ["Agra", "Bhopal", "Chennai", "Delhi"]
    bodies = [
        example("ContactCreate.json"),
        *({**example("ContactUpdate.json"), "city": c} for c in cities),
        example("ContactDelete.json"),
    ]
    name = write(tmp_path / "events.jsonl", "\n".join(json.dumps(b) for b in bodies))
    report = ghl.json("replay-webhook", name)
    assert [e["outcome"] for e in report["events"]] == [
        "created",
        *["updated"] * len(cities),
        "soft_deleted",
    ]
    [stored] = rows(ghl.db, "contacts")
    assert (stored["city"], stored["status"]) == ("Delhi", "inactive")
    inbox = rows(ghl.db, "inbox")
    assert [r["status"] for r in inbox] == ["applied"] * len(bodies)
    assert [r["id"] for r in inbox] == sorted(r["id"] for r in inbox)


def test_a_terminal_sees_the_bodies_checked_and_applied_on_stderr(
    ghl: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("ghlsync_cli.sync.replay.REPLAY_CHUNK", 2)
    bodies = [{**example("ContactUpdate.json"), "city": f"City {n}"} for n in range(5)]
    name = write(tmp_path / "events.jsonl", "\n".join(json.dumps(b) for b in bodies))
    terminal = {"TTY_COMPATIBLE": "1"}  # (rich draws as on a terminal)

    shown = ghl("replay-webhook", name, **terminal)
    assert shown.exit_code == 0, shown.output
    assert "Checking bodies" in shown.stderr and "Applying bodies" in shown.stderr
    assert "5/5" in shown.stderr
    assert len(shown.stdout.splitlines()) == len(bodies)  # (the outcomes alone on stdout)

    for quiet in (("--no-progress",), ("--json",)):
        result = ghl("replay-webhook", name, *quiet, **terminal)
        assert result.exit_code == 0, result.output
        assert "bodies" not in result.stderr, quiet


def test_a_replay_stopped_midway_keeps_whole_batches_and_a_rerun_applies_the_rest(
    ghl: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("ghlsync_cli.sync.replay.REPLAY_CHUNK", 2)
    cities = ["Agra", "Bhopal", "Chennai"]
    bodies = [
        example("ContactCreate.json"),
        *({**example("ContactUpdate.json"), "city": c} for c in cities),
    ]
    name = write(tmp_path / "events.jsonl", "\n".join(json.dumps(b) for b in bodies))
    receive_many = inbox.receive_many
    calls = []

    def disk_full_on_the_second_batch(store: Any, events: Any, **kwargs: Any) -> Any:
        calls.append(len(events))
        if len(calls) == 2:
            raise StorageError("The disk is full.", path=str(ghl.db))
        return receive_many(store, events, **kwargs)

    monkeypatch.setattr("ghlsync_cli.sync.replay.receive_many", disk_full_on_the_second_batch)
    stopped = ghl("replay-webhook", name)
    assert stopped.exit_code == StorageError.exit_code, stopped.output
    # The first batch was stored and applied; nothing of the second.
    assert [r["status"] for r in rows(ghl.db, "inbox")] == ["applied", "applied"]
    assert rows(ghl.db, "contacts")[0]["city"] == "Agra"

    monkeypatch.setattr("ghlsync_cli.sync.replay.receive_many", receive_many)
    report = ghl.json("replay-webhook", name)
    assert [(e["duplicate"], e["outcome"]) for e in report["events"]] == [
        (True, "unchanged"),
        (True, "unchanged"),
        (False, "updated"),
        (False, "updated"),
    ]
    assert rows(ghl.db, "contacts")[0]["city"] == "Chennai"


def test_bodies_from_stdin(ghl: Cli) -> None:
    text = (EXAMPLES / "ContactCreate.json").read_text()
    result = ghl("replay-webhook", "-", "--json", input=text)
    assert result.exit_code == 0, result.output
    [only] = json.loads(result.stdout)["events"]
    assert (only["source"], only["type"], only["outcome"]) == ("-#1", "ContactCreate", "created")


MALFORMED: dict[str, tuple[bytes, str]] = {
    "a broken JSON line": (
        b'{"type": "ContactCreate", "locationId": "ve9EPM428h8vShlRW1KT", "id": "a1"}\n'
        b'{"type": "ContactUpdate", "locationId": \n',
        "Line 2 is not valid JSON",
    ),
    "an array item without type": (
        json.dumps(
            [{"type": "ContactCreate", "locationId": GHL_LOCATION, "id": "a1"}, {"id": "a2"}]
        ).encode(),
        "#2: Webhook body has no event type.",
    ),
    "an array item that is not an object": (
        json.dumps([{"type": "ContactCreate", "locationId": GHL_LOCATION, "id": "a1"}, 7]).encode(),
        "#2: Webhook body is not a JSON object.",
    ),
    "a truncated object": (
        b'{\n  "type": "ContactCreate",\n  "locationId": "ve9EPM428h8vShlRW1KT",\n',
        "is not valid JSON",
    ),
    "invalid UTF-8": (b'{"type": "ContactCreate", "name": "\xff"}', "not valid UTF-8"),
    "an empty file": (b"\n\n", "holds no JSON"),
    "5,000-deep nesting": (b"[" * 5000 + b"]" * 5000, "nested deeper than"),
    "a line nested 100 deep": (
        b'{"type": "ContactCreate", "locationId": "x", "id": "a1"}\n'
        + b'{"type": "ContactCreate", "n": '
        + b"[" * 100
        + b"]" * 100
        + b"}",
        "Webhook body is nested deeper than",
    ),
    "a body nested 100 deep": (
        b'{"type": "ContactCreate", "n": ' + b"[" * 100 + b"]" * 100 + b"}",
        "Webhook body is nested deeper than",
    ),
    "a 5,000-digit number": (b'{"type": "ContactCreate", "n": ' + b"7" * 5000 + b"}", ""),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_input_exits_65_and_applies_nothing(ghl: Cli, tmp_path: Path, case: str) -> None:
    data, message = MALFORMED[case]
    good = str(EXAMPLES / "ContactCreate.json")
    bad = write(tmp_path / "bad.jsonl", data)

    result = ghl("replay-webhook", good, bad)

    assert result.exit_code == EXIT_DATAERR, result.output
    assert result.stderr.startswith("Error: "), result.stderr
    assert message in result.stderr
    assert result.stdout == ""
    assert nothing_applied(ghl.db)


def test_a_stored_body_with_an_unreadable_date_does_not_crash_the_replay(
    ghl: Cli, tmp_path: Path
) -> None:
    body = {**example("ContactCreate.json"), "dateUpdated": "0001-01-01T00:00:00+01:00"}
    result = ghl("replay-webhook", write(tmp_path / "odd.json", json.dumps(body)))
    assert "Unexpected error" not in result.stderr
    # Either refused up front (65, nothing stored) or applied; never left stuck in the inbox.
    assert result.exit_code in (0, EXIT_DATAERR), result.output
    assert [r for r in rows(ghl.db, "inbox") if r["status"] == "pending"] == []


# ---- --verify ------------------------------------------------------------------------------------


def saved(body: dict[str, Any], *, signature_of: bytes | None = None) -> dict[str, Any]:
    """An item as a receiver would save it: the raw body text and the headers it came with."""
    raw = json.dumps(body, separators=(",", ":"))
    signature = sign_body(raw.encode() if signature_of is None else signature_of)
    return {
        "headers": {"Content-Type": "application/json", "X-GHL-Signature": signature},
        "body": raw,
    }


def test_verify_accepts_bodies_signed_by_a_trusted_key(ghl: Cli, tmp_path: Path) -> None:
    items = [saved(example("ContactCreate.json")), saved(example("ContactDelete.json"))]
    name = write(tmp_path / "signed.jsonl", "\n".join(json.dumps(i) for i in items))

    report = ghl.json(
        "replay-webhook", "--verify", "--public-key", str(WEBHOOK_PUBLIC_KEY_PATH), name
    )
    assert [e["outcome"] for e in report["events"]] == ["created", "soft_deleted"]


def test_verify_refuses_a_tampered_body_and_applies_nothing(ghl: Cli, tmp_path: Path) -> None:
    original = example("ContactUpdate.json")
    tampered = saved(
        {**original, "email": "attacker@example.com"},
        signature_of=json.dumps(original, separators=(",", ":")).encode(),
    )
    items = [saved(example("ContactCreate.json")), tampered]
    name = write(tmp_path / "signed.json", json.dumps(items))

    result = ghl("replay-webhook", "--verify", "--public-key", str(WEBHOOK_PUBLIC_KEY_PATH), name)

    assert result.exit_code == EXIT_DATAERR, result.output
    assert f"{name}#2: X-GHL-Signature does not match the body." in result.stderr
    assert nothing_applied(ghl.db)


def test_verify_trusts_only_ghl_keys_unless_told_otherwise(ghl: Cli, tmp_path: Path) -> None:
    name = write(tmp_path / "signed.json", json.dumps(saved(example("ContactCreate.json"))))
    result = ghl("replay-webhook", "--verify", name)
    assert result.exit_code == EXIT_DATAERR, result.output
    assert "does not match" in result.stderr
    assert nothing_applied(ghl.db)


def test_verify_refuses_a_body_saved_without_its_headers(ghl: Cli) -> None:
    result = ghl(
        "replay-webhook",
        "--verify",
        "--public-key",
        str(WEBHOOK_PUBLIC_KEY_PATH),
        str(EXAMPLES / "ContactCreate.json"),
    )
    assert result.exit_code == EXIT_DATAERR, result.output
    assert "no X-GHL-Signature or X-WH-Signature header" in result.stderr
    assert nothing_applied(ghl.db)


def test_an_uninstall_disconnects_the_location_and_removes_its_secrets(
    sandbox: Sandbox, sandbox_server: SandboxServer, tmp_path: Path
) -> None:
    uninstalled = example("AppUninstall-location.json")["locationId"]
    sandbox.add_location(uninstalled, "uninstalled-token-canary")
    sandbox.add_location(GHL_LOCATION, "kept-token-canary")
    secrets_file = tmp_path / "secrets.json"
    cli = Cli(db=tmp_path / "ghlsync.db", api_base=sandbox_server.url, token=None)
    for location, token in ((uninstalled, "uninstalled"), (GHL_LOCATION, "kept")):
        connected = cli(
            "connect",
            "--location-id",
            location,
            "--token-stdin",
            input=f"{token}-token-canary\n",
            GHLSYNC_SECRETS_FILE=str(secrets_file),
        )
        assert connected.exit_code == 0, connected.output

    report = cli.json(
        "replay-webhook",
        str(EXAMPLES / "AppUninstall-location.json"),
        GHLSYNC_SECRETS_FILE=str(secrets_file),
    )

    assert [e["outcome"] for e in report["events"]] == ["disconnected"]
    remaining = json.loads(secrets_file.read_text())["secrets"]["ghlsync"]
    assert not any(account.startswith(uninstalled) for account in remaining)
    assert remaining[f"{GHL_LOCATION}:access_token"] == "kept-token-canary"
    status = cli.json("status", GHLSYNC_SECRETS_FILE=str(secrets_file))
    connected_by_id = {loc["location_id"]: loc["connected"] for loc in status["locations"]}
    assert connected_by_id == {uninstalled: False, GHL_LOCATION: True}
