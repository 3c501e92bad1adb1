"""``make demo`` (``python -m ghlsync_cli.demo``) runs end to end and leaves what it shows."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path


def test_the_demo_runs_end_to_end_and_leaves_the_synced_database(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GHLSYNC_")}
    result = subprocess.run(
        [sys.executable, "-m", "ghlsync_cli.demo"],
        cwd=tmp_path,  # the demo works in ./.demo
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "later, with no sync run." in result.stdout  # the webhook arrived

    conn = sqlite3.connect(tmp_path / ".demo" / "ghlsync.db")
    try:
        by_status = dict(conn.execute("SELECT status, count(*) FROM contacts GROUP BY status"))
        assert by_status == {"active": 251}  # 250 seeded and the one added locally
        [(ghl_id, phone)] = conn.execute(
            "SELECT ghl_id, phone FROM contacts WHERE email = 'mary.ann@example.com'"
        )
        assert ghl_id and phone == "+14155550132"
        assert conn.execute("SELECT count(*) FROM contacts WHERE city = 'Lisbon'").fetchone()[0]
        reconciled = "SELECT count(*) FROM contacts WHERE company = 'Reconciled Inc'"
        assert conn.execute(reconciled).fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0
    finally:
        conn.close()
