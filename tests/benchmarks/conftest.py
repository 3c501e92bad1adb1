"""Benchmark fixtures (sandbox processes, a synced 100k database) and the one results table.

Benchmarks take minutes, so they run only when asked for with ``-m bench`` (``make bench``);
a plain ``pytest`` run deselects them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.benchmarks.support import (
    FULL,
    ROWS,
    SandboxProcess,
    render_table,
    sandbox_process,
    timed_initial_sync,
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave benchmarks out unless the run selects markers (``make bench`` passes ``-m bench``)."""
    if config.getoption("markexpr"):
        return
    kept = [item for item in items if item.get_closest_marker("bench") is None]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in kept])
        items[:] = kept


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print every row measured in this session as one table."""
    if ROWS:
        terminalreporter.section("benchmarks")
        terminalreporter.write_line(render_table(ROWS))


@pytest.fixture(scope="session")
def sandbox_100k() -> Iterator[SandboxProcess]:
    """A sandbox process holding ``FULL`` (100,000) contacts."""
    with sandbox_process(FULL) as sandbox:
        yield sandbox


@pytest.fixture(scope="session")
def synced_100k(sandbox_100k: SandboxProcess, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database after an initial-sync of the 100k sandbox (also warms the sandbox's caches)."""
    db = tmp_path_factory.mktemp("synced") / "synced.db"
    _, report = timed_initial_sync(db, sandbox_100k.url)
    assert report.pull.created == FULL, report.pull
    return db
