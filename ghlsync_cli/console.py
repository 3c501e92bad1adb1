"""Output: data on stdout (tables or one JSON document), messages and progress on stderr.

Keeping the two streams apart means ``ghlsync contacts list --json | jq`` always sees valid JSON,
whatever warnings or progress bars the run printed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from ghlsync_cli.mapping import CONTACT_FIELDS


def stdout() -> Console:
    """The data console (built per call so tests capturing stdout see the output)."""
    return Console(file=sys.stdout, soft_wrap=True, highlight=False)


def stderr() -> Console:
    """The message console."""
    return Console(file=sys.stderr, soft_wrap=True, highlight=False)


def emit_json(data: object) -> None:
    """Write one JSON document to stdout."""
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def info(message: str) -> None:
    """A message for the user, on stderr."""
    stderr().print(message, markup=False)


def error(message: str, hint: str | None = None) -> None:
    """The error printer: ``Error: …`` and an optional ``Hint: …`` on stderr."""
    console = stderr()
    console.print(f"[bold red]Error:[/] {_escape(message)}")
    if hint:
        console.print(f"[yellow]Hint:[/] {_escape(hint)}")


def _escape(text: str) -> str:
    return text.replace("[", r"\[")


def contact_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """A contact in the contract's JSON form."""
    contact = {name: row.get(name) for name in CONTACT_FIELDS}
    contact["tags"] = sorted(contact["tags"] or [])
    contact["dnd"] = bool(contact["dnd"])
    return contact


def contacts_table(rows: Sequence[Mapping[str, Any]]) -> None:
    """Contacts as a table on stdout."""
    table = Table(show_lines=False, header_style="bold")
    for column in ("id", "name", "email", "phone", "tags", "status", "ghl_id"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            row["id"],
            row.get("name") or "",
            row.get("email") or "",
            row.get("phone") or "",
            ", ".join(row.get("tags") or []),
            row["status"],
            row.get("ghl_id") or "-",
        )
    stdout().print(table)


def contact_detail(row: Mapping[str, Any]) -> None:
    """One contact as field/value lines on stdout."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    for name, value in contact_json(row).items():
        shown = (
            ", ".join(value) if isinstance(value, list) else ("" if value is None else str(value))
        )
        table.add_row(name, shown)
    stdout().print(table)


def key_value_table(title: str, pairs: Sequence[tuple[str, str]]) -> None:
    """A titled two-column table on stdout."""
    table = Table(title=title, show_header=False, title_justify="left", title_style="bold")
    table.add_column(style="bold")
    table.add_column()
    for key, value in pairs:
        table.add_row(key, value)
    stdout().print(table)


def rows_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A plain table on stdout."""
    table = Table(header_style="bold")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row)
    stdout().print(table)


@contextmanager
def progress_bar(enabled: bool) -> Iterator[Callable[[str, int, int | None], None]]:
    """A progress callback drawing a rich bar on stderr (a no-op when not enabled or not a TTY)."""
    console = stderr()
    if not enabled or not console.is_terminal:
        yield lambda phase, done, total: None
        return
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    tasks: dict[str, Any] = {}
    labels = {
        "pull": "Pulling contacts",
        "push": "Pushing changes",
        "sweep": "Sweeping",
        "check": "Checking bodies",
        "apply": "Applying bodies",
    }

    def update(phase: str, done: int, total: int | None) -> None:
        if phase not in tasks:
            tasks[phase] = progress.add_task(labels.get(phase, phase), total=total)
        progress.update(tasks[phase], completed=done, total=total)

    with progress:
        yield update
