"""The text `ghlsync schedule` prints: systemd units and a crontab line."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ghlsync_cli.errors import ConfigError
from ghlsync_cli.schedule import (
    STATE_DB,
    Unit,
    crontab_line,
    find_executable,
    systemd_units,
)

EXE = "/opt/ghlsync/bin/ghlsync"
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "read-only",
    "UMask": "0077",
    "PrivateTmp": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "RestrictRealtime": "yes",
    "SystemCallArchitectures": "native",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
}


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections → key → values, skipping comments (systemd's own rules, enough for our units)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for line in text.splitlines():
        if not line.strip() or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None, f"key outside a section: {line!r}"
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def units_by_name(units: list[Unit]) -> dict[str, dict[str, dict[str, list[str]]]]:
    return {unit.name: parse_unit(unit.text) for unit in units}


def make_executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


# ---- find_executable ----------------------------------------------------------------------------


def test_find_executable_is_the_running_installation() -> None:
    found = find_executable()
    assert Path(found).is_absolute()
    assert Path(found) == Path(sys.executable).parent / "ghlsync"
    assert os.access(found, os.X_OK)


def test_find_executable_prefers_the_script_beside_the_interpreter(tmp_path: Path) -> None:
    python = make_executable(tmp_path / "venv" / "bin" / "python")
    beside = make_executable(tmp_path / "venv" / "bin" / "ghlsync")
    make_executable(tmp_path / "elsewhere" / "ghlsync")
    found = find_executable(python=str(python), search_path=str(tmp_path / "elsewhere"))
    assert found == str(beside)


def test_find_executable_falls_back_to_path_then_to_python_m(tmp_path: Path) -> None:
    python = make_executable(tmp_path / "my env" / "bin" / "python")
    on_path = make_executable(tmp_path / "elsewhere" / "ghlsync")
    assert find_executable(python=str(python), search_path=str(on_path.parent)) == str(on_path)
    fallback = find_executable(python=str(python), search_path=str(tmp_path / "empty"))
    assert shlex.split(fallback) == [str(python), "-m", "ghlsync_cli"]


# ---- systemd units ------------------------------------------------------------------------------


def test_units_and_their_commands(tmp_path: Path) -> None:
    db = tmp_path / "data" / "ghlsync.db"
    units = systemd_units(executable=EXE, db=db)
    assert [u.name for u in units] == [
        "ghlsync-reconcile.service",
        "ghlsync-reconcile.timer",
        "ghlsync-serve.service",
    ]
    parsed = units_by_name(units)
    reconcile = parsed["ghlsync-reconcile.service"]["Service"]
    assert reconcile["Type"] == ["oneshot"]
    assert reconcile["ExecStart"] == [f"{EXE} --db {db} reconcile --all"]
    assert reconcile["SuccessExitStatus"] == ["75"]
    assert "Install" not in parsed["ghlsync-reconcile.service"]  # started by the timer only
    serve = parsed["ghlsync-serve.service"]
    assert serve["Service"]["ExecStart"] == [f"{EXE} --db {db} serve --host 127.0.0.1 --port 8787"]
    assert serve["Service"]["Restart"] == ["on-failure"]
    assert serve["Install"]["WantedBy"] == ["default.target"]


@pytest.mark.parametrize("name", ["ghlsync-reconcile.service", "ghlsync-serve.service"])
def test_services_are_hardened_and_can_write_only_the_database_directory(
    tmp_path: Path, name: str
) -> None:
    db = tmp_path / "data" / "ghlsync.db"
    service = units_by_name(systemd_units(executable=EXE, db=db))[name]["Service"]
    for key, value in HARDENING.items():
        assert service.get(key) == [value], key
    assert service["ReadWritePaths"] == [f"-{db.parent}"]
    assert "StateDirectory" not in service
    # Python's C extensions (libffi closures) need W+X memory: deliberately left out.
    assert "MemoryDenyWriteExecute" not in service
    # Headless options are documented, not switched on.
    assert "LoadCredential" not in service
    text = next(u.text for u in systemd_units(executable=EXE, db=db) if u.name == name)
    assert "#LoadCredential=ghlsync-token:/etc/ghlsync/token" in text
    assert "#Environment=GHLSYNC_LOCATION=" in text
    assert "CREDENTIALS_DIRECTORY" in text


def test_without_a_database_the_units_use_the_state_directory() -> None:
    parsed = units_by_name(systemd_units(executable=EXE, db=None))
    for name in ("ghlsync-reconcile.service", "ghlsync-serve.service"):
        service = parsed[name]["Service"]
        assert service["StateDirectory"] == ["ghlsync"]
        assert "ReadWritePaths" not in service
        assert service["ExecStart"][0].startswith(f"{EXE} --db %S/ghlsync/ghlsync.db ")
    assert STATE_DB == "%S/ghlsync/ghlsync.db"


def test_each_unit_says_how_to_install_it(tmp_path: Path) -> None:
    for unit in systemd_units(executable=EXE, db=tmp_path / "g.db"):
        head = unit.text.split("\n[", 1)[0]
        assert all(line.startswith("#") for line in head.splitlines() if line)
        assert "~/.config/systemd/user/" in head
        assert "/etc/systemd/system/" in head
        assert "systemctl --user daemon-reload && systemctl --user enable --now" in head
    timer_head = units_by_name(systemd_units(executable=EXE, db=tmp_path / "g.db"))
    assert timer_head["ghlsync-reconcile.timer"]["Install"]["WantedBy"] == ["timers.target"]


def test_timer_every_15_minutes_at_a_stable_offset(tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    timer = units_by_name(systemd_units(executable=EXE, db=db))["ghlsync-reconcile.timer"]
    spec = timer["Timer"]
    match = re.fullmatch(r"\*-\*-\* \*:(\d\d)/15:00", spec["OnCalendar"][0])
    assert match and 0 <= int(match.group(1)) < 15
    assert spec["Persistent"] == ["true"]
    assert spec["RandomizedDelaySec"] == ["60"]
    assert spec["AccuracySec"] == ["1min"]
    assert spec["Unit"] == ["ghlsync-reconcile.service"]
    # Deterministic: the same inputs give the same text; cron runs at the same minute.
    assert systemd_units(executable=EXE, db=db) == systemd_units(executable=EXE, db=db)
    cron_minute = crontab_line(executable=EXE, db=db).splitlines()[1].split()[0]
    assert re.match(rf"^(\*|{int(match.group(1))}-59)/15$", cron_minute)


@pytest.mark.parametrize(
    ("every", "calendar", "cron_hours"),
    [
        (5, r"\*-\*-\* \*:0\d/5:00", "*"),
        (30, r"\*-\*-\* \*:\d\d/30:00", "*"),
        (60, r"\*-\*-\* 00/1:\d\d:00", "*"),
        (120, r"\*-\*-\* 00/2:\d\d:00", "*/2"),
        (1440, r"\*-\*-\* 00/24:\d\d:00", "*/24"),
    ],
)
def test_other_intervals(tmp_path: Path, every: int, calendar: str, cron_hours: str) -> None:
    db = tmp_path / "g.db"
    timer = units_by_name(systemd_units(executable=EXE, db=db, every_minutes=every))
    assert re.fullmatch(calendar, timer["ghlsync-reconcile.timer"]["Timer"]["OnCalendar"][0])
    fields = crontab_line(executable=EXE, db=db, every_minutes=every).splitlines()[1].split()
    assert fields[1] == cron_hours
    assert f"every {every} minutes" in timer["ghlsync-reconcile.timer"]["Unit"]["Description"][0]


@pytest.mark.parametrize("every", [0, 7, 45, 90, 1441])
def test_intervals_that_do_not_tile_a_day_are_refused(tmp_path: Path, every: int) -> None:
    with pytest.raises(ConfigError, match=f"{every}"):
        systemd_units(executable=EXE, db=tmp_path / "g.db", every_minutes=every)
    with pytest.raises(ConfigError):
        crontab_line(executable=EXE, db=tmp_path / "g.db", every_minutes=every)


def test_paths_are_quoted_for_systemd() -> None:
    db = Path('/srv/my data/100%/$HOME/it\'s "q"\\.db')
    exe = shlex.quote("/opt/my apps/ghlsync")  # `executable` is in shell syntax
    units = units_by_name(systemd_units(executable=exe, db=db))
    service = units["ghlsync-reconcile.service"]["Service"]
    # % and $ would be expanded by systemd in arguments; the program path expands no $.
    assert service["ExecStart"] == [
        '"/opt/my apps/ghlsync" --db '
        '"/srv/my data/100%%/$$HOME/it\'s \\"q\\"\\\\.db" reconcile --all'
    ]
    assert service["ReadWritePaths"] == ['"-/srv/my data/100%%/$HOME"']


def test_the_python_m_fallback_is_split_into_words(tmp_path: Path) -> None:
    python = tmp_path / "my env" / "bin" / "python"
    executable = f"{shlex.quote(str(python))} -m ghlsync_cli"
    service = units_by_name(systemd_units(executable=executable, db=tmp_path / "g.db"))
    exec_start = service["ghlsync-reconcile.service"]["Service"]["ExecStart"][0]
    assert exec_start.startswith(f'"{python}" -m ghlsync_cli --db ')
    line = crontab_line(executable=executable, db=tmp_path / "g.db").splitlines()[1]
    assert shlex.split(line)[5:8] == [str(python), "-m", "ghlsync_cli"]


@pytest.mark.parametrize("bad", ["/opt/it's/ghlsync", '/opt/"q"/ghlsync', "/opt/back\\slash/g"])
def test_an_executable_systemd_cannot_run_is_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="quote or a backslash"):
        systemd_units(executable=shlex.quote(bad), db=Path("/srv/g.db"))


def test_control_characters_are_refused() -> None:
    with pytest.raises(ConfigError, match="control character"):
        systemd_units(executable=EXE, db=Path("/srv/a\nb/g.db"))
    with pytest.raises(ConfigError, match="line break"):
        crontab_line(executable=EXE, db=Path("/srv/a\nb/g.db"))


# ---- crontab ------------------------------------------------------------------------------------


def test_crontab_line(tmp_path: Path) -> None:
    db = tmp_path / "data" / "ghlsync.db"
    comment, line = crontab_line(executable=EXE, db=db).split("\n")
    assert comment.startswith("# ") and "every 15 minutes" in comment
    fields = line.split(maxsplit=5)
    assert re.fullmatch(r"(\*|\d{1,2}-59)/15", fields[0])
    assert fields[1:5] == ["*", "*", "*", "*"]
    assert shlex.split(fields[5]) == [
        EXE,
        "--db",
        str(db),
        "reconcile",
        "--all",
        ">>",
        str(db.parent / "ghlsync-reconcile.log"),
        "2>&1",
    ]
    assert "flock" not in line  # ghlsync locks itself
    assert crontab_line(executable=EXE, db=db) == crontab_line(executable=EXE, db=db)


def test_crontab_paths_are_shell_quoted_and_percent_escaped(tmp_path: Path) -> None:
    db = tmp_path / "my data" / "50%" / "it's.db"
    line = crontab_line(executable=shlex.quote("/opt/my apps/ghlsync"), db=db).splitlines()[1]
    command = line.split(maxsplit=5)[5]
    assert "%" not in command.replace("\\%", "")  # cron would turn a bare % into a newline
    words = shlex.split(command.replace("\\%", "%"))  # what cron hands to the shell
    assert words[:3] == ["/opt/my apps/ghlsync", "--db", str(db)]
    # The shell really reads it that way (cron drops the backslash before each %).
    arguments = command.replace("\\%", "%").split(" >> ")[0]
    echoed = subprocess.run(
        ["sh", "-c", f"printf '%s\\n' {arguments}"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert echoed == ["/opt/my apps/ghlsync", "--db", str(db), "reconcile", "--all"]


def test_relative_database_paths_become_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    service = units_by_name(systemd_units(executable=EXE, db=Path("rel.db")))
    assert (
        f"--db {tmp_path / 'rel.db'} "
        in service["ghlsync-reconcile.service"]["Service"]["ExecStart"][0]
    )
    assert f"--db {tmp_path / 'rel.db'} " in crontab_line(executable=EXE, db=Path("rel.db"))


# ---- systemd's own check ------------------------------------------------------------------------


needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def verify(directory: Path, *, user: bool) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` on every unit in ``directory``."""
    env = {**os.environ}
    args = ["systemd-analyze", "verify", "--man=no"]
    if user:
        runtime = directory.parent / "runtime"
        runtime.mkdir(mode=0o700, exist_ok=True)
        env["XDG_RUNTIME_DIR"] = str(runtime)
        args.insert(1, "--user")
    files = sorted(str(p) for p in directory.iterdir())
    return subprocess.run([*args, *files], capture_output=True, text=True, env=env, timeout=60)


def write_units(directory: Path, units: list[Unit]) -> Path:
    directory.mkdir(parents=True)
    for unit in units:
        (directory / unit.name).write_text(unit.text)
    return directory


@needs_systemd_analyze
@pytest.mark.parametrize("user", [False, True], ids=["system", "user"])
def test_tricky_paths_survive_systemd_parsing(tmp_path: Path, user: bool) -> None:
    # verify checks that ExecStart's program exists: it only passes if systemd read the path back
    # exactly as written (spaces, % and $ in it).
    exe = make_executable(tmp_path / "my apps" / "50%" / "$HOME" / "ghlsync")
    db = tmp_path / "my data" / "100%" / "$x" / "g.db"
    units = write_units(tmp_path / "units", systemd_units(executable=shlex.quote(str(exe)), db=db))
    result = verify(units, user=user)
    if user and "Failed to initialize manager" in result.stderr:
        pytest.skip(f"no user manager here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


@needs_systemd_analyze
def test_verify_would_notice_a_wrong_path(tmp_path: Path) -> None:
    # The control for the test above: a program that does not exist fails verification.
    units = systemd_units(executable=str(tmp_path / "missing" / "ghlsync"), db=tmp_path / "g.db")
    result = verify(write_units(tmp_path / "units", units), user=False)
    assert result.returncode != 0
    assert "is not executable" in result.stderr
