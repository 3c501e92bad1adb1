"""Fixtures of the reliability suite: a seeded RNG, an observed GHL, and change makers."""

from __future__ import annotations

import os
import random
from collections.abc import Generator, Iterator

import pytest

from ghlsync_cli.asgi import ThreadedServer
from ghlsync_cli.sandbox import Sandbox, create_app
from tests.helpers import Cli
from tests.reliability.support import DEFAULT_SEED, SEED_ENV, Changes, Observer

_SEED = pytest.StashKey[str]()


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    """A RNG seeded by $RELIABILITY_SEED and the test's id; a failure report names the seed."""
    seed = os.environ.get(SEED_ENV) or DEFAULT_SEED
    request.node.stash[_SEED] = seed
    return random.Random(f"{seed}/{request.node.nodeid}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Say how to repeat a failed run's random choices."""
    report = yield
    seed = item.stash.get(_SEED, None)
    if report.failed and seed is not None:
        report.sections.append(("reliability", f"repeat with {SEED_ENV}={seed}"))
    return report


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without ``-m``, the long loops stay out: ``pytest tests/reliability`` is the short run
    (``make reliability`` selects them with ``-m reliability_long``)."""
    if config.option.markexpr:
        return
    long = [item for item in items if item.get_closest_marker("reliability_long")]
    if long:
        config.hook.pytest_deselected(items=long)
        items[:] = [item for item in items if not item.get_closest_marker("reliability_long")]


@pytest.fixture
def observer(cli: Cli, sandbox: Sandbox) -> Iterator[Observer]:
    """The sandbox served once more behind an ``Observer``; ``cli`` talks to GHL through it."""
    watched = Observer(create_app(sandbox))
    with ThreadedServer(watched, name="observed-ghl") as server:
        cli.api_base = server.url
        yield watched


@pytest.fixture
def changes(cli: Cli, sandbox: Sandbox, rng: random.Random) -> Changes:
    """Makes edits on both sides with values no other edit uses."""
    return Changes(cli, sandbox, rng)
