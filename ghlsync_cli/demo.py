"""``make demo``: the whole job end to end against the bundled GHL sandbox, in under a minute.

It starts the sandbox (a local fake of GHL with seeded contacts) and the webhook receiver, then runs
the commands a user would: connect, initial-sync, a change in GHL that arrives by webhook, a local
contact pushed to GHL, a change that only reconcile can see, and finally the contacts and status.
Every command is printed before it runs. The database stays in ``.demo/`` to explore afterwards
(``sqlite3 .demo/ghlsync.db``).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ghlsync_cli.sandbox import DEFAULT_LOCATION_ID, DEFAULT_TOKEN, WEBHOOK_PUBLIC_KEY_PATH

DEMO_DIR = Path(".demo")
SEED = 250


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _say(text: str) -> None:
    bold, plain = ("\033[1m", "\033[0m") if sys.stdout.isatty() else ("", "")
    print(f"\n{bold}== {text}{plain}", flush=True)


def _http(method: str, url: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - loopback
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback only
        return json.loads(response.read() or b"null")


def _wait_until(check: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if check():
                return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"demo: timed out waiting for {what}")


@contextmanager
def _background(
    args: list[str], env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _ghlsync(env: dict[str, str], *args: str) -> None:
    print(f"$ ghlsync {shlex.join(args)}", flush=True)
    result = subprocess.run([sys.executable, "-m", "ghlsync_cli", *args], env=env, check=False)
    if result.returncode != 0:
        raise SystemExit(f"demo: 'ghlsync {shlex.join(args)}' exited {result.returncode}")


def _db_value(db: Path, sql: str, params: tuple[Any, ...]) -> Any:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = conn.execute(sql, params).fetchone()
        return row[0] if row else None
    finally:
        conn.close()


def main() -> None:
    """Run the demo."""
    shutil.rmtree(DEMO_DIR, ignore_errors=True)
    DEMO_DIR.mkdir()
    db = (DEMO_DIR / "ghlsync.db").resolve()
    api_port, hook_port = _free_port(), _free_port()
    api = f"http://127.0.0.1:{api_port}"
    hooks = f"http://127.0.0.1:{hook_port}/webhooks/ghl"
    env = {
        **os.environ,
        "GHLSYNC_DB": str(db),
        "GHLSYNC_API_BASE": api,
        # The sandbox's token. Real deployments use the keyring: connect --token-stdin.
        "GHLSYNC_TOKEN": DEFAULT_TOKEN,
        "GHLSYNC_CONFIG": str(DEMO_DIR / "none.toml"),
        "COLUMNS": os.environ.get("COLUMNS", "120"),
    }
    python = [sys.executable, "-m", "ghlsync_cli"]
    _say(f"Starting the GHL sandbox on {api} with {SEED} contacts, and the webhook receiver")
    sandbox_cmd = [
        *python,
        "sandbox",
        "--port",
        str(api_port),
        "--seed",
        str(SEED),
        "--webhook-url",
        hooks,
    ]
    serve_cmd = [
        *python,
        "serve",
        "--port",
        str(hook_port),
        "--public-key",
        str(WEBHOOK_PUBLIC_KEY_PATH),
    ]
    with (
        _background(sandbox_cmd, env, DEMO_DIR / "sandbox.log"),
        _background(serve_cmd, env, DEMO_DIR / "serve.log"),
    ):
        _wait_until(lambda: bool(_http("GET", f"{api}/_sandbox/health")), 20, "the sandbox")
        _wait_until(
            lambda: bool(_http("GET", f"http://127.0.0.1:{hook_port}/healthz")), 20, "serve"
        )
        print(f"sandbox: {api}   webhooks: {hooks}   database: {db}")

        _say("1. Connect the location (the token is verified with one API call)")
        _ghlsync(env, "connect", "--location-id", DEFAULT_LOCATION_ID)

        _say("2. Initial sync: every GHL contact into SQLite")
        _ghlsync(env, "initial-sync")

        _say("3. A contact is edited in GHL; GHL sends a signed webhook to `ghlsync serve`")
        target = _http("GET", f"{api}/_sandbox/contacts")["contacts"][0]
        print(
            f"Editing {target.get('firstName')} {target.get('lastName')} in GHL: "
            "city → Lisbon, tag 'webhook-demo' added"
        )
        tags = sorted({*target.get("tags", []), "webhook-demo"})
        _http("PATCH", f"{api}/_sandbox/contacts/{target['id']}", {"city": "Lisbon", "tags": tags})
        took = _wait_until(
            lambda: (
                _db_value(db, "SELECT city FROM contacts WHERE ghl_id = ?", (target["id"],))
                == "Lisbon"
            ),
            10,
            "the webhook",
        )
        print(f"The change reached {db.name} {took * 1000:.0f} ms later, with no sync run.")

        _say("4. A contact is added locally and pushed to GHL at once")
        _ghlsync(
            env,
            "contacts",
            "add",
            "--first-name",
            "Mary Ann",
            "--last-name",
            "Smith",
            "--email",
            "mary.ann@example.com",
            "--phone",
            "(415) 555-0132",
            "--tag",
            "demo",
        )
        pushed = [
            c
            for c in _http("GET", f"{api}/_sandbox/contacts")["contacts"]
            if c.get("email") == "mary.ann@example.com"
        ]
        print(f"GHL now holds it: id {pushed[0]['id']}, phone {pushed[0]['phone']}")

        _say("5. Webhooks are lost (switched off); reconcile from a timer catches the change")
        _http("POST", f"{api}/_sandbox/webhooks", {"url": None, "enabled": False})
        other = _http("GET", f"{api}/_sandbox/contacts")["contacts"][1]
        _http("PATCH", f"{api}/_sandbox/contacts/{other['id']}", {"companyName": "Reconciled Inc"})
        _ghlsync(env, "reconcile")

        _say("6. The result")
        _ghlsync(env, "contacts", "list", "--limit", "8")
        _ghlsync(env, "status")
        _ghlsync(env, "conflicts", "list")
    _say(f"Done. Explore the database: sqlite3 {db}   (logs in {DEMO_DIR}/)")


if __name__ == "__main__":
    main()
