"""What every reliability test checks after a fault, and the tools that cause the faults.

The promises under test (DESIGN.md): no duplicates on either side, no data lost, and a rerun after
any interruption converges. ``assert_converged`` is that promise as one check; ``HighWater`` adds
"the reconcile cursor never moves backwards"; ``kill_at_random_moment`` is the ``kill -9``.

Loops come in two sizes (``loop_sizes``): a short one that runs in ``make test`` and a long one
behind the ``reliability_long`` marker (``make reliability``). Random choices come from a RNG
seeded per test (``RELIABILITY_SEED``), so a failing run can be repeated exactly.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from random import Random
from typing import Any

import pytest
from _pytest.mark.structures import ParameterSet
from starlette.types import ASGIApp, Receive, Scope, Send

from ghlsync_cli.sandbox import Sandbox
from tests.helpers import Cli, contact_rows
from tests.webhooks.support import wait_for

ITERATIONS_ENV = "RELIABILITY_ITERATIONS"
SECONDS_ENV = "RELIABILITY_SECONDS"
SEED_ENV = "RELIABILITY_SEED"
DEFAULT_SEED = "20250601"

# Local field → GHL key, spelled out here rather than taken from the code under test.
TEXT_FIELDS = (
    ("first_name", "firstName"),
    ("last_name", "lastName"),
    ("email", "email"),
    ("phone", "phone"),
    ("company", "companyName"),
    ("address1", "address1"),
    ("city", "city"),
    ("state", "state"),
    ("postal_code", "postalCode"),
    ("country", "country"),
    ("source", "source"),
)


def loop_sizes(short: int, long: int) -> list[ParameterSet]:
    """One loop in two sizes: ``short`` runs in make test, ``long`` (or $RELIABILITY_ITERATIONS)
    only in make reliability."""
    long = int(os.environ.get(ITERATIONS_ENV) or long)
    return [
        pytest.param(short, id=f"{short}x"),
        pytest.param(long, id=f"{long}x", marks=pytest.mark.reliability_long),
    ]


def durations(short: float, long: float) -> list[ParameterSet]:
    """A timed run in two sizes, in seconds: ``long`` (or $RELIABILITY_SECONDS) only in make
    reliability."""
    long = float(os.environ.get(SECONDS_ENV) or long)
    return [
        pytest.param(short, id=f"{short:g}s"),
        pytest.param(long, id=f"{long:g}s", marks=pytest.mark.reliability_long),
    ]


# ---- reading the database as another program would ------------------------------------------


@contextmanager
def read_only(db: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection, closed afterwards."""
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as conn:
        yield conn


def integrity(db: Path) -> str:
    """``PRAGMA integrity_check``: "ok" for an intact file."""
    with read_only(db) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def files_of(db: Path) -> dict[str, bytes]:
    """The database and its WAL, byte for byte (an absent WAL is an empty one)."""
    found: dict[str, bytes] = {}
    for suffix in ("", "-wal"):
        path = db.with_name(db.name + suffix)
        found[path.name] = path.read_bytes() if path.exists() else b""
    return found


def local_fields(row: dict[str, Any]) -> dict[str, Any]:
    """A contacts row's synced fields, comparable with ``remote_fields``."""
    values = {name: row[name] for name, _ in TEXT_FIELDS}
    values["tags"] = sorted(json.loads(row["tags"] or "[]"))
    values["dnd"] = bool(row["dnd"])
    return values


def remote_fields(contact: dict[str, Any]) -> dict[str, Any]:
    """A GHL contact's synced fields (GHL omits empty keys), comparable with ``local_fields``."""
    values = {name: contact.get(key) or None for name, key in TEXT_FIELDS}
    values["tags"] = sorted(contact.get("tags") or [])
    values["dnd"] = bool(contact.get("dnd"))
    return values


def assert_converged(cli: Cli, sandbox: Sandbox, *, why: str) -> None:
    """Both sides agree, nothing is duplicated, nothing is left queued, and the file is intact.

    - the SQLite file passes ``PRAGMA integrity_check``;
    - every GHL contact is linked to exactly one local row, and no two local rows share a GHL id;
    - no two GHL contacts share an email (GHL is set to allow duplicates where a test wants a
      blind second create to show up here);
    - every active linked contact's synced fields equal GHL's; a linked contact GHL no longer has
      is not active;
    - no active local contact is left unlinked, and the push queue is empty with no failures.
    """
    assert integrity(cli.db) == "ok", why
    rows = [r for r in contact_rows(cli.db) if r["location_id"] == cli.location_id]
    remote = {c["id"]: c for c in sandbox.list_contacts()}

    links = Counter(r["ghl_id"] for r in rows if r["ghl_id"])
    twice = sorted(g for g, n in links.items() if n > 1)
    assert not twice, f"GHL contacts linked by several local rows: {twice} ({why})"
    unlinked = sorted(set(remote) - set(links))
    assert not unlinked, (
        f"{len(unlinked)} GHL contacts have no local row, e.g. {unlinked[:3]} ({why})"
    )
    emails = Counter(c["email"].lower() for c in remote.values() if c.get("email"))
    shared = sorted(e for e, n in emails.items() if n > 1)
    assert not shared, f"GHL contacts sharing an email: {shared} ({why})"

    for row in rows:
        if row["status"] != "active":
            continue
        assert row["ghl_id"], f"active local contact {row['id']} never reached GHL ({why})"
        contact = remote.get(row["ghl_id"])
        assert contact is not None, f"{row['id']} is active but GHL deleted it ({why})"
        here, there = local_fields(row), remote_fields(contact)
        differ = {k: (here[k], there[k]) for k in here if here[k] != there[k]}
        assert not differ, f"{row['id']} / {row['ghl_id']}: (local, GHL) {differ} ({why})"

    location = location_status(cli)
    assert location["pushes"] == {"queued": 0, "failed": 0}, (location["failed_pushes"], why)


def location_status(cli: Cli) -> dict[str, Any]:
    """The location's part of ``ghlsync status --json``."""
    [location] = [
        loc for loc in cli.json("status")["locations"] if loc["location_id"] == cli.location_id
    ]
    return dict(location)


def assert_created_once(sandbox: Sandbox, names: Sequence[tuple[str, str]], *, why: str) -> None:
    """Each (first, last) name a test pushed exists in GHL exactly once."""
    seen = Counter(
        (c.get("firstName"), c.get("lastName"))
        for c in sandbox.list_contacts()
        if (c.get("firstName"), c.get("lastName")) in set(names)
    )
    wrong = {name: seen.get(name, 0) for name in names if seen.get(name, 0) != 1}
    assert not wrong, f"pushed contacts not in GHL exactly once: {wrong} ({why})"


class HighWater:
    """The reconcile cursor as ``status --json`` shows it, checked never to move backwards."""

    def __init__(self, cli: Cli) -> None:
        self.cli = cli
        self.marks: list[str | None] = []

    def check(self, why: str) -> str | None:
        """Read the high water now; fail if it is behind an earlier reading."""
        mark: str | None = location_status(self.cli)["cursor"]["high_water"]
        earlier = [m for m in self.marks if m is not None]
        if earlier:
            assert mark is not None and mark >= max(earlier), (mark, max(earlier), why)
        self.marks.append(mark)
        return mark


# ---- changes on either side ---------------------------------------------------------------------


class Changes:
    """Edits "in the GHL UI" and by "another program" on the SQLite file, with unique values."""

    def __init__(self, cli: Cli, sandbox: Sandbox, rng: Random) -> None:
        self.cli = cli
        self.sandbox = sandbox
        self.rng = rng
        self._serial = 0
        self.pushed_names: list[tuple[str, str]] = []

    def _next(self) -> int:
        self._serial += 1
        return self._serial

    def in_ghl(self, *, updates: int, creates: int = 0, deletes: int = 0) -> None:
        """Edit, create and delete contacts in GHL, as a person in its UI would.

        Contacts this test pushed are left alone, so that "created exactly once" stays checkable
        by their names.
        """
        contacts = [c for c in self.sandbox.list_contacts() if c.get("firstName") != "Pushed"]
        chosen = self.rng.sample(contacts, min(len(contacts), updates + deletes))
        for contact in chosen[:updates]:
            n = self._next()
            change = self.rng.choice(
                [
                    {"city": f"Remote City {n}"},
                    {"companyName": f"Remote Co {n}"},
                    {"firstName": f"Remote{n}"},
                    {"tags": [*(contact.get("tags") or []), f"remote-{n}"]},
                ]
            )
            self.sandbox.ui_update_contact(contact["id"], change)
        for contact in chosen[updates:]:
            self.sandbox.ui_delete_contact(contact["id"])
        for _ in range(creates):
            n = self._next()
            self.sandbox.ui_create_contact(
                {"firstName": "Made", "lastName": f"In GHL {n}", "email": f"ghl-{n}@remote.example"}
            )

    def in_sqlite(self, *, updates: int) -> None:
        """Change linked contacts with plain SQL, as an agent or script sharing the file would."""
        with closing(sqlite3.connect(self.cli.db, timeout=10)) as conn, conn:
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM contacts WHERE location_id = ? AND status = 'active' "
                    "AND ghl_id IS NOT NULL ORDER BY id",
                    (self.cli.location_id,),
                )
            ]
            for contact_id in self.rng.sample(ids, min(len(ids), updates)):
                n = self._next()
                column, value = self.rng.choice(
                    [
                        ("city", f"Local City {n}"),
                        ("company", f"Local Co {n}"),
                        ("email", f"local-{n}@local.example"),
                        ("tags", json.dumps(sorted(["local", f"local-{n}"]))),
                    ]
                )
                conn.execute(f"UPDATE contacts SET {column} = ? WHERE id = ?", (value, contact_id))

    def local_only(self, count: int, *, kinds: Sequence[str] = ("email", "phone", "name")) -> None:
        """Insert contacts GHL does not have yet: with an email, a phone only, or a name only."""
        with closing(sqlite3.connect(self.cli.db, timeout=10)) as conn, conn:
            for index in range(count):
                n = self._next()
                kind = kinds[index % len(kinds)]
                first, last = "Pushed", f"{kind.title()} Only {n}"
                email = f"local-only-{n}@local.example" if kind == "email" else None
                # 555 numbers: never among the sandbox's generated contacts.
                phone = f"(212) 555-{n:04d}" if kind == "phone" else None
                conn.execute(
                    "INSERT INTO contacts (location_id, first_name, last_name, email, phone, tags)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (self.cli.location_id, first, last, email, phone, '["local-only"]'),
                )
                self.pushed_names.append((first, last))


# ---- a view of GHL's traffic --------------------------------------------------------------------


class Observer:
    """Wraps the sandbox app to see every API request: when it arrived, and how many are open.

    It injects nothing. Tests use it to anchor a kill to the run's first request, to wait until
    GHL has finished what a killed run had in flight, and to measure the request rate.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._lock = threading.Lock()
        self.arrivals: list[tuple[float, str, str]] = []
        self.open = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Count the request, pass it on, and count it closed when the app is done with it."""
        path = str(scope.get("path", ""))
        if scope["type"] != "http" or path.startswith("/_sandbox"):
            await self.app(scope, receive, send)
            return
        with self._lock:
            self.arrivals.append((time.monotonic(), str(scope["method"]), path))
            self.open += 1
        try:
            await self.app(scope, receive, send)
        finally:
            with self._lock:
                self.open -= 1

    def count(self) -> int:
        """API requests seen so far."""
        with self._lock:
            return len(self.arrivals)

    def settle(self, timeout: float = 10.0) -> None:
        """Wait until GHL has answered (or finished acting on) every request it received."""
        wait_for(lambda: self.open == 0, timeout=timeout, what="GHL to finish in-flight requests")


@dataclass(frozen=True)
class Interrupted:
    """How a run ended: killed ``delay`` seconds after its first request, or on its own first."""

    delay: float
    killed: bool
    returncode: int
    stderr: str

    def __str__(self) -> str:
        how = f"killed {self.delay:.2f} s into its work" if self.killed else "finished first"
        return f"{how} (exit {self.returncode})"


def kill_at_random_moment(
    cli: Cli,
    observer: Observer,
    args: Sequence[str],
    *,
    rng: Random,
    window: tuple[float, float],
    **env: str,
) -> Interrupted:
    """Run ``ghlsync ARGS`` as a process and SIGKILL it at a random moment of its work.

    The moment is drawn from ``window`` (seconds), counted from the run's first request to GHL:
    Python's start-up is not where the windows worth testing are. A run that finishes before
    its moment must have succeeded. Afterwards GHL finishes whatever was in flight, as it would
    before any real rerun.
    """
    before = observer.count()
    with cli.spawn(*args, **env) as proc:
        try:
            wait_for(
                lambda: observer.count() > before or proc.poll() is not None,
                timeout=60,
                what=f"the first request of {' '.join(args)}",
            )
            delay = rng.uniform(*window)
            try:
                proc.wait(timeout=delay)
                killed = False
            except subprocess.TimeoutExpired:
                proc.kill()
                killed = True
            _, stderr = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    outcome = Interrupted(delay=delay, killed=killed, returncode=proc.returncode, stderr=stderr)
    if not killed:
        assert proc.returncode == 0, f"{' '.join(args)}: {outcome}: {stderr}"
    observer.settle()
    return outcome
