"""What runs ``ghlsync reconcile`` on a timer: systemd units or a crontab line, as text.

Nothing here installs anything; ``ghlsync schedule`` prints the text and the user puts it in place.
Why the units look the way they do:

* The reconcile service is ``Type=oneshot`` and counts exit 75 ("another run holds the lock", "try
  again later") as success, so an overlapping run never marks the unit failed.
* Both services run sandboxed (read-only system and home, private /tmp, no privilege gain). The
  database directory is the one writable place: ``StateDirectory=ghlsync`` when no database was
  chosen, else ``ReadWritePaths=`` on the chosen file's directory (WAL, lock files and the database
  itself all live there).
* The schedule is offset by a minute derived from the database path: the same inputs always give
  the same text, and machines do not all call GHL on the hour.
* Paths are quoted for the consumer: systemd's own command-line syntax (``%`` and ``$`` are
  special there) or the POSIX shell that cron runs (plus cron's own ``%``).

``executable`` is a command in POSIX shell syntax (usually one absolute path; the fallback is
``python -m ghlsync_cli``); it is split with :func:`shlex.split` and re-quoted for each consumer.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from ghlsync_cli.errors import ConfigError

SERVE_HOST = "127.0.0.1"
SERVE_PORT = 8787
STATE_DIRECTORY = "ghlsync"
#: The database inside StateDirectory=: ``%S`` is /var/lib (system) or ~/.local/state (user).
STATE_DB = f"%S/{STATE_DIRECTORY}/ghlsync.db"
LOG_NAME = "ghlsync-reconcile.log"
MINUTES_PER_DAY = 1440

_SYSTEMD_SAFE = re.compile(r"[A-Za-z0-9_@+=:,./-]+")


@dataclass(frozen=True)
class Unit:
    """One systemd unit file: its file name and its contents."""

    name: str
    text: str


def find_executable(*, python: str | None = None, search_path: str | None = None) -> str:
    """The ``ghlsync`` command to schedule, as an absolute path (shell-quoted if it needs it).

    The console script beside the running interpreter comes first (the same installation that is
    running now, even from an unactivated virtualenv), then ``ghlsync`` on ``search_path`` (default
    $PATH), then ``<python> -m ghlsync_cli``.
    """
    python = python or sys.executable
    # Not resolved: a virtualenv's bin/python is a symlink to the base interpreter.
    beside = Path(os.path.abspath(python)).parent / "ghlsync"
    if beside.is_file() and os.access(beside, os.X_OK):
        return shlex.quote(str(beside))
    found = shutil.which("ghlsync", path=search_path)
    if found:
        return shlex.quote(os.path.abspath(found))
    return f"{shlex.quote(os.path.abspath(python))} -m ghlsync_cli"


def systemd_units(
    *, executable: str, db: Path | None = None, every_minutes: int = 15
) -> list[Unit]:
    """The reconcile service and timer and the serve service; ``db`` None = StateDirectory."""
    _check_interval(every_minutes)
    program, *arguments = _split_command(executable)
    command = [_systemd_program(program), *(_systemd_word(word) for word in arguments)]
    if db is None:
        key, db_word, storage = STATE_DB, STATE_DB, [f"StateDirectory={STATE_DIRECTORY}"]
    else:
        db = _absolute(db)
        key, db_word = str(db), _systemd_word(str(db))
        # "-": a missing directory must not stop the unit from starting; ghlsync then reports it.
        directory = _systemd_word("-" + str(db.parent), variables=False)
        storage = [f"ReadWritePaths={directory}"]
    prefix = " ".join([*command, "--db", db_word])
    reconcile = Unit(
        "ghlsync-reconcile.service",
        _service_text(
            unit="ghlsync-reconcile.service",
            description="ghlsync: reconcile GoHighLevel contacts with the local database",
            service=[
                "Type=oneshot",
                f"ExecStart={prefix} reconcile --all",
                "# 75 = another run holds the lock, or work was left queued: retried next time.",
                "SuccessExitStatus=75",
                "# A stuck run would block every later one; killing it is safe, the next resumes.",
                "TimeoutStartSec=30min",
            ],
            storage=storage,
            install=None,
        ),
    )
    timer = Unit("ghlsync-reconcile.timer", _timer_text(every_minutes, _offset(key, every_minutes)))
    serve = Unit(
        "ghlsync-serve.service",
        _service_text(
            unit="ghlsync-serve.service",
            description="ghlsync: receive GoHighLevel webhooks",
            service=[
                "Type=exec",
                f"ExecStart={prefix} serve --host {SERVE_HOST} --port {SERVE_PORT}",
                "Restart=on-failure",
                "RestartSec=5s",
            ],
            storage=storage,
            install="default.target",
        ),
    )
    return [reconcile, timer, serve]


def crontab_line(*, executable: str, db: Path, every_minutes: int = 15) -> str:
    """A comment line and a crontab entry running ``reconcile --all`` every ``every_minutes``."""
    _check_interval(every_minutes)
    db = _absolute(db)
    words = [*_split_command(executable), "--db", str(db), "reconcile", "--all"]
    log = db.parent / LOG_NAME
    if any("\n" in word for word in [*words, str(log)]):
        raise ConfigError(
            "A path contains a line break, which a crontab cannot hold.",
            hint="Choose a --db path without line breaks.",
        )
    minute = _offset(str(db), every_minutes)
    if every_minutes < 60:
        when = f"{minute}-59/{every_minutes} * * * *" if minute else f"*/{every_minutes} * * * *"
    else:
        hours = every_minutes // 60
        when = f"{minute} */{hours} * * *" if hours > 1 else f"{minute} * * * *"
    command = " ".join(_cron_quote(word) for word in words)
    comment = (
        f"# ghlsync: reconcile every {every_minutes} minutes (it locks itself: an overlapping run "
        f"exits 75 and does nothing); output goes to {log}"
    )
    return f"{comment}\n{when} {command} >> {_cron_quote(str(log))} 2>&1"


# ---- helpers -------------------------------------------------------------------------------------


def _check_interval(every_minutes: int) -> None:
    """Only intervals that tile a day: cron and OnCalendar= can say them exactly."""
    if every_minutes < 1 or every_minutes > MINUTES_PER_DAY:
        raise ConfigError(f"--every {every_minutes} is out of range (1 to {MINUTES_PER_DAY}).")
    tiles_hour = every_minutes < 60 and 60 % every_minutes == 0
    tiles_day = every_minutes % 60 == 0 and 24 % (every_minutes // 60) == 0
    if not (tiles_hour or tiles_day):
        raise ConfigError(
            f"Cannot schedule every {every_minutes} minutes exactly.",
            hint="Use a divisor of 60 (5, 10, 15, 20, 30) or whole hours dividing 24 "
            "(60, 120, 180, 240, 360, 480, 720, 1440).",
        )


def _offset(key: str, every_minutes: int) -> int:
    """A stable minute in [0, min(every, 60)) derived from ``key`` (no randomness)."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:4], "big") % min(every_minutes, 60)


def _split_command(executable: str) -> list[str]:
    words = shlex.split(executable)
    if not words:
        raise ConfigError("No ghlsync executable to schedule.")
    return words


def _absolute(path: Path) -> Path:
    # Not resolve(): symlinked data directories stay as the user named them.
    return Path(os.path.abspath(path.expanduser()))


def _systemd_word(word: str, *, variables: bool = True) -> str:
    """One word in systemd's syntax: ``%`` (and in arguments ``$``) escaped, quoted if needed."""
    if any(ord(char) < 32 or ord(char) == 127 for char in word):
        raise ConfigError(
            f"The path {word!r} contains a control character, which a unit file cannot hold.",
            hint="Choose a path without line breaks or tabs.",
        )
    escaped = word.replace("%", "%%")
    if variables:
        escaped = escaped.replace("$", "$$")
    if _SYSTEMD_SAFE.fullmatch(word):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _systemd_program(path: str) -> str:
    """The executable of an ExecStart= line: systemd expands no ``$`` there, and forbids quotes."""
    if any(char in path for char in "\"'\\"):
        raise ConfigError(
            f"systemd cannot run {path!r}: its path contains a quote or a backslash.",
            hint="Install ghlsync in a directory without quotes or backslashes, or use --cron.",
        )
    return _systemd_word(path, variables=False)


def _cron_quote(word: str) -> str:
    """One argument for the shell cron runs; cron itself turns a bare ``%`` into a newline."""
    return shlex.quote(word).replace("%", "\\%")


def _install_help(unit: str) -> str:
    """The comment at the top of each unit: where to save it and how to turn it on."""
    if unit == "ghlsync-serve.service":
        title, what, enable = unit, "it", unit
    else:
        pair = "ghlsync-reconcile.service and ghlsync-reconcile.timer"
        title, what, enable = f"{unit} (one of a pair: {pair})", "both", "ghlsync-reconcile.timer"
    return (
        f"# {title}\n"
        f"# As a user unit (runs as you, with your login keyring): save {what} in\n"
        f"# ~/.config/systemd/user/, then\n"
        f"#   systemctl --user daemon-reload && systemctl --user enable --now {enable}\n"
        '#   (loginctl enable-linger "$USER" keeps it running while you are logged out)\n'
        f"# As a system unit: save {what} in /etc/systemd/system/, then\n"
        f"#   systemctl daemon-reload && systemctl enable --now {enable}"
    )


def _service_text(
    *,
    unit: str,
    description: str,
    service: list[str],
    storage: list[str],
    install: str | None,
) -> str:
    lines = [
        _install_help(unit),
        "",
        "[Unit]",
        f"Description={description}",
        "",
        "[Service]",
        *service,
        "# Headless machines without a keyring: hand the token over as a systemd credential;",
        "# ghlsync reads $CREDENTIALS_DIRECTORY/ghlsync-token.",
        "#LoadCredential=ghlsync-token:/etc/ghlsync/token",
        "# Only needed when several locations are connected and one should be chosen:",
        "#Environment=GHLSYNC_LOCATION=your-location-id",
        *storage,
        "UMask=0077",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "# read-only, not tmpfs: the ghlsync executable (a virtualenv) often lives under /home.",
        "ProtectHome=read-only",
        "PrivateTmp=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectControlGroups=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "RestrictRealtime=yes",
        "SystemCallArchitectures=native",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "# No MemoryDenyWriteExecute=: libffi closures (ctypes/cffi callbacks, used by keyring",
        "# backends and some C extensions) need writable+executable memory and would crash.",
    ]
    if install is not None:
        lines += ["", "[Install]", f"WantedBy={install}"]
    return "\n".join(lines) + "\n"


def _timer_text(every_minutes: int, minute: int) -> str:
    if every_minutes < 60:
        calendar = f"*-*-* *:{minute:02d}/{every_minutes}:00"
    else:
        hours = every_minutes // 60
        calendar = f"*-*-* 00/{hours}:{minute:02d}:00"
    lines = [
        _install_help("ghlsync-reconcile.timer"),
        "",
        "[Unit]",
        f"Description=Run ghlsync reconcile every {every_minutes} minutes",
        "",
        "[Timer]",
        f"OnCalendar={calendar}",
        "# Run at once after a boot or resume that missed a run.",
        "Persistent=true",
        "RandomizedDelaySec=60",
        "AccuracySec=1min",
        "Unit=ghlsync-reconcile.service",
        "",
        "[Install]",
        "WantedBy=timers.target",
    ]
    return "\n".join(lines) + "\n"
