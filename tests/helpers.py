"""Helpers for tests that drive the real CLI against the sandbox on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from typer.testing import CliRunner, Result

from ghlsync_cli.cli import app
from ghlsync_cli.sandbox import DEFAULT_LOCATION_ID, DEFAULT_TOKEN, SandboxServer


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclass
class Cli:
    """Runs ``ghlsync`` in-process (CliRunner) or as a subprocess, against one sandbox and db."""

    db: Path
    api_base: str
    token: str | None = DEFAULT_TOKEN
    location_id: str = DEFAULT_LOCATION_ID

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a run: db, API base and (unless None) GHLSYNC_TOKEN."""
        env = {"GHLSYNC_DB": str(self.db), "GHLSYNC_API_BASE": self.api_base}
        if self.token is not None:
            env["GHLSYNC_TOKEN"] = self.token
        env.update(extra)
        return env

    def __call__(self, *args: str, input: str | None = None, **env: str) -> Result:
        """Run in-process; returns Click's Result (stdout, stderr, exit_code)."""
        runner = CliRunner()
        return runner.invoke(
            app, list(args), input=input, env=self.env(**env), catch_exceptions=False
        )

    def json(self, *args: str, **env: str) -> Any:
        """Run with --json appended and parse stdout; asserts exit 0."""
        result = self(*args, "--json", **env)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    def connect(self) -> Result:
        """Connect the sandbox location with GHLSYNC_TOKEN."""
        result = self("connect", "--location-id", self.location_id)
        assert result.exit_code == 0, result.output
        return result

    def spawn(self, *args: str, stdin: int | None = None, **env: str) -> subprocess.Popen[str]:
        """Start ``python -m ghlsync_cli ARGS`` as a real process (for kill -9 and Ctrl-C tests).

        The process gets Ctrl-C as a terminal gives it even when the tests run as a background
        job of a shell, which ignores SIGINT for its children (and Python then never installs
        its KeyboardInterrupt handler).
        """
        full_env = {**os.environ, **self.env(**env)}
        sigint_ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        return subprocess.Popen(
            [sys.executable, "-m", "ghlsync_cli", *args],
            env=full_env,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_default_sigint if sigint_ignored else None,
        )

    def run(self, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
        """Run ``python -m ghlsync_cli ARGS`` to completion as a real process."""
        full_env = {**os.environ, **self.env(**env)}
        return subprocess.run(
            [sys.executable, "-m", "ghlsync_cli", *args],
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def contact_rows(db: Path) -> list[dict[str, Any]]:
    """Every contacts row, read with plain sqlite3 (as another program would)."""
    import sqlite3

    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM contacts ORDER BY id")]
    finally:
        conn.close()


def server_url(server: SandboxServer) -> str:
    """The sandbox base URL."""
    return server.url
