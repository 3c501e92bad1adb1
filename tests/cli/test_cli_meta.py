"""The CLI's self-description: help for every command, the version, and shell completions."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner, Result

import ghlsync_cli
from ghlsync_cli import completions
from ghlsync_cli.cli import app

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "completions"
# The commands DESIGN.md promises; more may exist, none of these may go missing.
CONTRACT_COMMANDS = {
    ("connect",),
    ("disconnect",),
    ("initial-sync",),
    ("reconcile",),
    ("push",),
    ("replay-webhook",),
    ("serve",),
    ("contacts", "add"),
    ("contacts", "update"),
    ("contacts", "delete"),
    ("contacts", "show"),
    ("contacts", "list"),
    ("conflicts", "list"),
    ("status",),
}


def command_tree() -> dict[tuple[str, ...], typer.main.TyperCommand | typer.main.TyperGroup]:
    """Every command and group of the app by its path (the root is ``()``)."""
    root = typer.main.get_command(app)
    found: dict[tuple[str, ...], typer.main.TyperCommand | typer.main.TyperGroup] = {}

    def walk(path: tuple[str, ...], command: object) -> None:
        assert isinstance(command, typer.main.TyperCommand | typer.main.TyperGroup)
        found[path] = command
        for name, sub in getattr(command, "commands", {}).items():
            walk((*path, name), sub)

    walk((), root)
    return found


TREE = command_tree()
LEAVES = sorted(p for p, c in TREE.items() if not isinstance(c, typer.main.TyperGroup))
GROUPS = sorted(p for p, c in TREE.items() if isinstance(c, typer.main.TyperGroup))


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    """Run ghlsync in-process, named ``ghlsync`` as the installed script is."""
    return CliRunner().invoke(app, list(args), prog_name="ghlsync", env=env)


def flat(text: str) -> str:
    """Help text with rich's boxes and line breaks folded into single spaces."""
    return " ".join(text.replace("│", " ").split())


def test_the_contract_commands_exist() -> None:
    assert CONTRACT_COMMANDS - set(TREE) == set()


@pytest.mark.parametrize("path", LEAVES, ids=" ".join)
def test_every_command_has_help_with_a_description_and_an_example(path: tuple[str, ...]) -> None:
    command = TREE[path]

    result = run(*path, "--help")

    assert result.exit_code == 0, result.output
    assert result.stdout.lstrip().startswith(f"Usage: ghlsync {' '.join(path)}")
    summary = (command.help or "").strip().splitlines()[0]
    assert summary.endswith("."), f"{path}: no one-line description"
    assert summary in flat(result.stdout)
    examples = [
        line.strip() for line in result.stdout.splitlines() if line.strip().startswith("Example:")
    ]
    assert examples, f"{path}: no Example: line in --help"
    for example in examples:
        assert re.match(rf"Example: ghlsync\b.*\b{re.escape(' '.join(path))}\b", example)


@pytest.mark.parametrize("path", LEAVES, ids=" ".join)
def test_every_option_and_argument_is_described(path: tuple[str, ...]) -> None:
    undescribed = [
        param.name
        for param in TREE[path].params
        if not param.hidden and not (getattr(param, "help", None) or "").strip()
    ]
    assert undescribed == []


@pytest.mark.parametrize("path", GROUPS, ids=lambda p: " ".join(p) or "ghlsync")
def test_every_group_has_help_listing_its_commands(path: tuple[str, ...]) -> None:
    command = TREE[path]

    result = run(*path, "--help")

    assert result.exit_code == 0, result.output
    summary = (command.help or "").strip().splitlines()[0]
    assert summary.endswith(".")
    assert summary in flat(result.stdout)
    listed = flat(result.stdout)
    for name in getattr(command, "commands", {}):
        assert f" {name} " in listed
    # Without a command, a group shows its help instead of doing something.
    bare = run(*path)
    assert flat(bare.stdout) == listed


def test_version() -> None:
    result = run("--version")

    assert result.exit_code == 0, result.output
    assert result.stdout == f"ghlsync {ghlsync_cli.__version__}\n"
    assert ghlsync_cli.__version__ == importlib.metadata.version("ghlsync")


def test_installed_script_prints_the_version() -> None:
    script = Path(sys.executable).with_name("ghlsync")
    result = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, timeout=30, check=False
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"ghlsync {ghlsync_cli.__version__}\n"


@pytest.mark.parametrize("shell", completions.SHELLS)
def test_committed_completions_are_up_to_date(shell: str) -> None:
    committed = completions.completion_path(COMMITTED, shell).read_text(encoding="utf-8")

    assert committed == completions.completion_script(shell), "run: make completions"


def test_generating_completions_writes_the_committed_files(tmp_path: Path) -> None:
    assert completions.main([str(tmp_path / "out")]) == 0

    for shell in completions.SHELLS:
        fresh = completions.completion_path(tmp_path / "out", shell).read_bytes()
        assert fresh == completions.completion_path(COMMITTED, shell).read_bytes()
    assert completions.main(["--check", str(COMMITTED)]) == 0


def test_check_reports_stale_completions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    completions.write_completions(tmp_path)
    completions.completion_path(tmp_path, "zsh").write_text("# old\n")

    assert completions.main(["--check", str(tmp_path)]) == 1
    assert "ghlsync.zsh is out of date; run: make completions" in capsys.readouterr().err
    assert completions.main(["--check", "--bogus"]) == 2


def test_completions_do_not_depend_on_the_users_shell_or_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = {shell: completions.completion_script(shell) for shell in completions.SHELLS}
    home = tmp_path / "elsewhere"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("SHELL", "/usr/bin/fish")
    monkeypatch.setattr(sys, "argv", ["python -m ghlsync_cli"])

    for shell in completions.SHELLS:
        assert completions.completion_script(shell) == expected[shell]
    assert list(home.iterdir()) == []  # nothing was installed
    with pytest.raises(ValueError, match="unsupported shell"):
        completions.completion_script("tcsh")


def test_completions_match_what_the_installed_script_shows() -> None:
    script = Path(sys.executable).with_name("ghlsync")
    env = {"PATH": "/usr/bin:/bin", "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    procs = {
        shell: subprocess.Popen(
            [str(script), "--show-completion", shell],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for shell in completions.SHELLS
    }
    for shell, proc in procs.items():
        with proc:
            out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert out == completions.completion_script(shell)


def test_the_bash_script_completes_commands() -> None:
    script = completions.completion_script("bash")
    assert "_GHLSYNC_COMPLETE=complete_bash" in script
    assert script.rstrip().endswith("complete -o default -F _ghlsync_completion ghlsync")

    def complete(words: str) -> list[str]:
        cword = str(len(words.split()) - (0 if words.endswith(" ") else 1))
        env = {"_GHLSYNC_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": cword}
        result = run(env=env)
        assert result.exit_code == 0, result.output
        return result.stdout.split()

    assert complete("ghlsync con") == ["connect", "contacts", "conflicts"]
    assert set(complete("ghlsync contacts ")) == {"add", "update", "delete", "show", "list"}
    assert "--token-stdin" in complete("ghlsync connect --")


@pytest.mark.parametrize("path", [("status",), ("contacts", "list"), ("conflicts", "list")])
def test_json_before_the_command_is_the_commands_json(
    path: tuple[str, ...], tmp_path: Path
) -> None:
    env = {"GHLSYNC_DB": str(tmp_path / "ghlsync.db"), "GHLSYNC_TOKEN": ""}
    after = run(*path, "--json", env=env)
    before = run("--json", *path, env=env)

    assert before.exit_code == after.exit_code == 0, before.output
    assert before.stdout == after.stdout
    assert before.stdout.lstrip().startswith(("{", "["))


@pytest.mark.parametrize("port", ["99999", "-5"])
def test_serve_refuses_a_port_out_of_range_as_a_usage_error(port: str) -> None:
    result = run("serve", "--port", port)

    assert result.exit_code == 2, result.output
    assert "Invalid value for '--port'" in flat(result.output)
