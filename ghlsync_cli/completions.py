"""Shell completion scripts for ``ghlsync``, generated from the Typer app itself.

Why generate them here instead of asking a shell: ``ghlsync --show-completion`` detects the
user's current shell and names the program after however it was started (``python -m
ghlsync_cli`` gives a different script than ``ghlsync``). The committed files in ``completions/``
must not depend on who ran ``make completions``, so this module fixes both: the shell is always
given explicitly and the program name is always ``ghlsync``. What is written is exactly what an
installed ``ghlsync --show-completion`` prints when run from that shell.

    python -m ghlsync_cli.completions completions    # writes completions/ghlsync.{bash,zsh,fish}
    python -m ghlsync_cli.completions --check completions   # exit 1 if any file is stale
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

# Completions come from Typer's own machinery, so this module is a second home for typer.
import typer.main  # noqa: TID251

from ghlsync_cli.cli import app

PROG_NAME = "ghlsync"
SHELLS: tuple[str, ...] = ("bash", "zsh", "fish")
# Typer reads this when it builds the command: set, ``--show-completion`` takes the shell as a
# value instead of detecting the shell that started the process.
_NO_DETECTION_ENV = "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION"


@contextlib.contextmanager
def _shell_detection_disabled() -> Iterator[None]:
    previous = os.environ.get(_NO_DETECTION_ENV)
    os.environ[_NO_DETECTION_ENV] = "1"
    try:
        yield
    finally:
        if previous is None:
            del os.environ[_NO_DETECTION_ENV]
        else:
            os.environ[_NO_DETECTION_ENV] = previous


def completion_script(shell: str) -> str:
    """The completion script for ``shell``, as ``ghlsync --show-completion SHELL`` prints it."""
    if shell not in SHELLS:
        raise ValueError(f"unsupported shell {shell!r}; choose one of {', '.join(SHELLS)}")
    out = io.StringIO()
    with _shell_detection_disabled():
        command = typer.main.get_command(app)
    code: object = None
    with contextlib.redirect_stdout(out):
        try:
            command.main(
                args=["--show-completion", shell], prog_name=PROG_NAME, standalone_mode=False
            )
        except SystemExit as exc:  # --show-completion prints the script, then exits
            code = exc.code
    script = out.getvalue()
    if code not in (None, 0) or not script.strip():
        raise RuntimeError(f"typer printed no {shell} completion script (exit {code!r})")
    return script


def completion_path(directory: Path, shell: str) -> Path:
    """Where the script for ``shell`` lives in ``directory``."""
    return directory / f"{PROG_NAME}.{shell}"


def write_completions(directory: Path) -> list[Path]:
    """Write ``ghlsync.{bash,zsh,fish}`` into ``directory``; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for shell in SHELLS:
        path = completion_path(directory, shell)
        path.write_text(completion_script(shell), encoding="utf-8", newline="\n")
        written.append(path)
    return written


def stale_completions(directory: Path) -> list[Path]:
    """Files in ``directory`` that are missing or differ from freshly generated scripts."""
    stale = []
    for shell in SHELLS:
        path = completion_path(directory, shell)
        if not path.is_file() or path.read_text(encoding="utf-8") != completion_script(shell):
            stale.append(path)
    return stale


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ghlsync_cli.completions [--check] [DIRECTORY]`` (default ``completions``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    check = "--check" in args
    rest = [a for a in args if a != "--check"]
    if len(rest) > 1 or any(a.startswith("-") for a in rest):
        sys.stderr.write("usage: python -m ghlsync_cli.completions [--check] [DIRECTORY]\n")
        return 2
    directory = Path(rest[0] if rest else "completions")
    if check:
        stale = stale_completions(directory)
        for path in stale:
            sys.stderr.write(f"{path} is out of date; run: make completions\n")
        return 1 if stale else 0
    for path in write_completions(directory):
        sys.stderr.write(f"wrote {path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
