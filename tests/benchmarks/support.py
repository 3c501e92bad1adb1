"""What the benchmarks share: a sandbox in its own process, engines on files, and the table.

The sandbox runs as ``python -m ghlsync_cli sandbox`` in a child process, so neither its CPU time
(on another core) nor its memory counts against the code being measured, and the client talks to
it over loopback exactly as it would talk to GHL.

Every row is measured against a baseline taken in the same run, and reported as a ratio: the
machine is shared and noisy, so absolute times vary between runs while the ratios hold.
"""

from __future__ import annotations

import os
import platform
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from ghlsync_cli.auth import BearerAuth
from ghlsync_cli.ghl.client import GHLClient, build_http_client
from ghlsync_cli.sandbox import DEFAULT_LOCATION_ID, DEFAULT_TOKEN
from ghlsync_cli.store import Store
from ghlsync_cli.sync.engine import SyncEngine, SyncReport

# The size of the big location; a smaller one (GHLSYNC_BENCH_CONTACTS=10000) makes a quick trial.
FULL = int(os.environ.get("GHLSYNC_BENCH_CONTACTS", "100000"))
LOCATION_ID = DEFAULT_LOCATION_ID
TOKEN = DEFAULT_TOKEN
CONNECTED_AT = "2026-01-01T00:00:00.000Z"
_URL = re.compile(rb"http://127\.0\.0\.1:\d+")


# ---- the sandbox, in its own process -------------------------------------------------------------


class SandboxProcess:
    """``ghlsync sandbox`` running in a child process; admin calls go over loopback."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str) -> None:
        self.proc = proc
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=120)

    def admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Call a ``/_sandbox`` route and return its JSON."""
        response = self.http.request(method, f"/_sandbox{path}", json=body)
        response.raise_for_status()
        return response.json()

    def set_rate_limit(
        self, *, enabled: bool, max_requests: int = 100, interval_ms: int = 10_000
    ) -> None:
        """Turn the limit on or off (usage is forgotten either way)."""
        self.admin(
            "POST",
            "/ratelimit",
            {"enabled": enabled, "max": max_requests, "interval_ms": interval_ms},
        )

    def stats(self) -> dict[str, Any]:
        """Request counters (``total``, ``rate_limited``, per route)."""
        result: dict[str, Any] = self.admin("GET", "/stats")
        return result

    def reset_stats(self) -> None:
        """Zero the counters."""
        self.admin("POST", "/stats/reset")

    def contacts(self) -> list[dict[str, Any]]:
        """Every contact, oldest first, as GHL returns them."""
        result: list[dict[str, Any]] = self.admin("GET", "/contacts")["contacts"]
        return result

    def stop(self) -> None:
        """Stop the child and wait for it."""
        self.http.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        assert self.proc.stderr is not None
        self.proc.stderr.close()


@contextmanager
def sandbox_process(seed_count: int, *, random_seed: int = 1) -> Iterator[SandboxProcess]:
    """A sandbox child process seeded with ``seed_count`` contacts, rate limit off."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ghlsync_cli",
            "sandbox",
            "--port",
            "0",
            "--seed",
            str(seed_count),
            "--random-seed",
            str(random_seed),
            "--no-rate-limit",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "COLUMNS": "300", "NO_COLOR": "1"},
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    found = _URL.search(line)
    if found is None:
        proc.kill()
        proc.wait()
        proc.stderr.close()
        raise RuntimeError(f"the sandbox did not start: {line!r}")
    # Keep draining stderr so the child can never block on a full pipe.
    threading.Thread(target=proc.stderr.read, daemon=True).start()
    sandbox = SandboxProcess(proc, found.group().decode())
    try:
        yield sandbox
    finally:
        sandbox.stop()


# ---- ghlsync on a file, against the sandbox ------------------------------------------------------


def open_store(db: Path) -> Store:
    """The database at ``db`` (created and migrated if new), with the location connected."""
    store = Store.open(db)
    with store.write():
        store.save_location(LOCATION_ID, token_kind="env", now=CONNECTED_AT)
    return store


@contextmanager
def engine_for(db: Path, api_base: str) -> Iterator[SyncEngine]:
    """A SyncEngine as ``ghlsync`` builds it: a file store and a paced, retrying GHL client."""
    store = open_store(db)
    http = build_http_client(api_base, auth=BearerAuth(lambda: TOKEN))
    client = GHLClient(http, location_id=LOCATION_ID)
    try:
        yield SyncEngine(store, client, location_id=LOCATION_ID)
    finally:
        client.close()
        store.close()


def timed_initial_sync(
    db: Path, api_base: str, *, page_limit: int = 500
) -> tuple[float, SyncReport]:
    """Seconds an initial-sync into a fresh database takes, and its report."""
    with engine_for(db, api_base) as engine:
        started = time.perf_counter()
        report = engine.initial_sync(page_limit=page_limit)
        return time.perf_counter() - started, report


def copy_db(source: Path, target: Path) -> Path:
    """A consistent copy of a database file (the WAL folded in)."""
    src, dst = sqlite3.connect(source), sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    return target


def best_of(runs: int, measure: Callable[[int], float]) -> float:
    """The fastest of ``runs`` measurements: noise only ever adds time."""
    return min(measure(i) for i in range(runs))


# ---- the table -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One benchmark result: what was measured, against what, and whether it met its target."""

    number: int
    name: str
    measured: str
    baseline: str
    ratio: str
    target: str
    passed: bool


ROWS: list[Row] = []


def record(row: Row) -> Row:
    """Keep a row for the table printed at the end of the session."""
    ROWS.append(row)
    return row


def machine() -> dict[str, str]:
    """The facts about the machine that BENCHMARKS.md reports next to the table."""
    model = "unknown"
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
    }


def render_table(rows: list[Row]) -> str:
    """The rows as one Markdown table, preceded by the machine they ran on."""
    info = machine()
    lines = [
        f"nproc {info['nproc']} · CPU {info['cpu']} · Python {info['python']} · "
        f"SQLite {info['sqlite']}",
        "",
        "| # | benchmark | measured | baseline | ratio | target | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in sorted(rows, key=lambda r: r.number):
        verdict = "PASS" if row.passed else "FAIL"
        lines.append(
            f"| {row.number} | {row.name} | {row.measured} | {row.baseline} | {row.ratio} "
            f"| {row.target} | {verdict} |"
        )
    return "\n".join(lines)
