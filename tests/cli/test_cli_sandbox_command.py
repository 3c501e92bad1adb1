"""``ghlsync sandbox``: a developer starts it, and what it prints is enough to connect to it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ANNOUNCED = re.compile(r"listening on (http://127\.0\.0\.1:\d+) \(location (\S+), 3 contacts\)")


def test_the_sandbox_command_prints_how_to_connect_and_that_works(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "GHLSYNC_DB": str(tmp_path / "ghlsync.db"),
        "GHLSYNC_CONFIG": str(tmp_path / "none.toml"),
    }
    env.pop("GHLSYNC_TOKEN", None)
    env.pop("GHLSYNC_SANDBOX_TOKEN", None)
    sandbox = subprocess.Popen(
        [sys.executable, "-m", "ghlsync_cli", "sandbox", "--port", "0", "--seed", "3"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert sandbox.stderr is not None
        announced = ANNOUNCED.search(sandbox.stderr.readline())
        assert announced, "no listening line"
        url, location = announced.groups()
        hint = sandbox.stderr.readline().strip()
        prefix = "Use it: "
        assert hint.startswith(prefix), hint
        # Run the printed command as a user would paste it, with this checkout's ghlsync.
        command = hint[len(prefix) :].replace(
            "ghlsync connect", f"{sys.executable} -m ghlsync_cli connect"
        )
        assert f"GHLSYNC_API_BASE={url}" in command and f"--location-id {location}" in command
        connected = subprocess.run(
            ["bash", "-c", command], env=env, capture_output=True, text=True, timeout=60
        )
        assert connected.returncode == 0, connected.stderr
        assert f"Connected location {location} (3 contacts in GHL)" in connected.stderr
    finally:
        sandbox.terminate()
        sandbox.communicate(timeout=10)  # waits, and closes the pipe
