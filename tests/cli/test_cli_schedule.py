"""`ghlsync schedule`: prints systemd units or a crontab line for this installation and database."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import Cli

SEPARATOR = re.compile(r"^# ---- (\S+) ----$", re.MULTILINE)


@pytest.fixture
def offline(tmp_path: Path) -> Cli:
    """The CLI with a database path and no sandbox: schedule never talks to GHL."""
    return Cli(db=tmp_path / "my data" / "ghlsync.db", api_base="http://127.0.0.1:9", token=None)


def split_units(stdout: str) -> dict[str, str]:
    """``schedule --systemd`` output → {file name: contents}."""
    parts = SEPARATOR.split(stdout)
    assert parts[0] == ""
    return {parts[i]: parts[i + 1].lstrip("\n") for i in range(1, len(parts), 2)}


def exec_start(unit_text: str) -> str:
    return next(line for line in unit_text.splitlines() if line.startswith("ExecStart="))


def test_systemd_prints_three_units_for_this_installation_and_database(offline: Cli) -> None:
    result = offline("schedule", "--systemd")
    assert result.exit_code == 0, result.output
    units = split_units(result.stdout)
    assert list(units) == [
        "ghlsync-reconcile.service",
        "ghlsync-reconcile.timer",
        "ghlsync-serve.service",
    ]
    exe = Path(sys.executable).parent / "ghlsync"
    assert exec_start(units["ghlsync-reconcile.service"]) == (
        f'ExecStart={exe} --db "{offline.db}" reconcile --all'
    )
    assert exec_start(units["ghlsync-serve.service"]) == (
        f'ExecStart={exe} --db "{offline.db}" serve --host 127.0.0.1 --port 8787'
    )
    for name in ("ghlsync-reconcile.service", "ghlsync-serve.service"):
        text = units[name]
        assert f'ReadWritePaths="-{offline.db.parent}"' in text.splitlines()
        for line in (
            "SuccessExitStatus=75"
            if name.startswith("ghlsync-reconcile")
            else "Restart=on-failure",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ProtectHome=read-only",
            "UMask=0077",
            "PrivateTmp=yes",
            "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        ):
            assert line in text.splitlines(), (name, line)
    assert "OnCalendar=" in units["ghlsync-reconcile.timer"]
    assert not offline.db.exists()  # printing units creates nothing
    assert result.stderr == ""


def test_db_flag_wins_over_the_environment(offline: Cli, tmp_path: Path) -> None:
    chosen = tmp_path / "chosen.db"
    result = offline("--db", str(chosen), "schedule", "--systemd")
    assert result.exit_code == 0, result.output
    assert f"--db {chosen} reconcile --all" in result.stdout
    assert str(offline.db) not in result.stdout


def test_cron_prints_a_comment_and_one_crontab_line(offline: Cli) -> None:
    result = offline("schedule", "--cron")
    assert result.exit_code == 0, result.output
    comment, line = result.stdout.rstrip("\n").split("\n")
    assert comment.startswith("# ghlsync: reconcile every 15 minutes")
    minute, hour, *_, command = line.split(maxsplit=5)
    assert re.fullmatch(r"(\*|\d{1,2}-59)/15", minute) and hour == "*"
    exe = str(Path(sys.executable).parent / "ghlsync")
    log = str(offline.db.parent / "ghlsync-reconcile.log")
    assert shlex.split(command) == [
        exe, "--db", str(offline.db), "reconcile", "--all", ">>", log, "2>&1"
    ]  # fmt: skip
    assert shlex.quote(str(offline.db)) in command  # the space in "my data" is quoted


def test_every_changes_the_interval(offline: Cli) -> None:
    result = offline("schedule", "--cron", "--every", "60")
    assert result.exit_code == 0, result.output
    assert re.match(r"^\d{1,2} \* \* \* \* ", result.stdout.splitlines()[1])
    result = offline("schedule", "--systemd", "--every", "30")
    assert result.exit_code == 0, result.output
    assert re.search(r"^OnCalendar=\*-\*-\* \*:\d\d/30:00$", result.stdout, re.MULTILINE)


def test_an_interval_cron_cannot_express_is_a_configuration_error(offline: Cli) -> None:
    result = offline("schedule", "--cron", "--every", "45")
    assert result.exit_code == 78, result.output
    assert "Error: Cannot schedule every 45 minutes exactly." in result.stderr
    assert "Hint: Use a divisor of 60" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("args", [[], ["--systemd", "--cron"]], ids=["neither", "both"])
def test_exactly_one_format_must_be_chosen(offline: Cli, args: list[str]) -> None:
    result = offline("schedule", *args)
    assert result.exit_code == 2, result.output
    assert "Choose one of --systemd or --cron." in result.stderr


def test_every_out_of_range_is_a_usage_error(offline: Cli) -> None:
    result = offline("schedule", "--cron", "--every", "0")
    assert result.exit_code == 2, result.output


def test_as_a_real_process_it_points_at_the_console_script(offline: Cli) -> None:
    result = offline.run("schedule", "--cron", timeout=60)
    assert result.returncode == 0, result.stderr
    exe = shlex.split(result.stdout.splitlines()[1].split(maxsplit=5)[5])[0]
    assert os.access(exe, os.X_OK) and Path(exe).name == "ghlsync"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
@pytest.mark.parametrize("user", [False, True], ids=["system", "user"])
def test_printed_units_pass_systemd_analyze_verify(
    offline: Cli, tmp_path: Path, user: bool
) -> None:
    result = offline("schedule", "--systemd")
    assert result.exit_code == 0, result.output
    directory = tmp_path / "units"
    directory.mkdir()
    for name, text in split_units(result.stdout).items():
        (directory / name).write_text(text)
    env = {**os.environ}
    args = ["systemd-analyze", "verify", "--man=no"]
    if user:
        runtime = tmp_path / "runtime"
        runtime.mkdir(mode=0o700)
        env["XDG_RUNTIME_DIR"] = str(runtime)
        args.insert(1, "--user")
    checked = subprocess.run(
        [*args, *sorted(str(p) for p in directory.iterdir())],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    if user and "Failed to initialize manager" in checked.stderr:
        pytest.skip(f"no user manager here: {checked.stderr.strip()}")
    assert checked.returncode == 0, checked.stderr
    assert checked.stderr == "", checked.stderr
