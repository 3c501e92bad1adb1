"""Fixtures for the sandbox tests: one loopback server per worker, reset before each test."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from ghlsync_cli.sandbox import (
    DEFAULT_TOKEN,
    Sandbox,
    SandboxConfig,
    SandboxServer,
)
from ghlsync_cli.sandbox.ratelimit import RateLimitSettings

API_HEADERS = {"Authorization": f"Bearer {DEFAULT_TOKEN}", "Version": "2021-07-28"}


@pytest.fixture(scope="session")
def sandbox_server() -> Iterator[SandboxServer]:
    """A sandbox served on loopback, shared by the tests of one worker."""
    with SandboxServer(SandboxConfig(rate_limit_enabled=False)) as server:
        yield server


@pytest.fixture
def sandbox(sandbox_server: SandboxServer) -> Iterator[Sandbox]:
    """The shared server's sandbox, emptied and set back to defaults around each test."""
    state = sandbox_server.sandbox

    def restore() -> None:
        state.reset()
        defaults = RateLimitSettings()
        state.rate_limiter.configure(
            enabled=False,
            max_requests=defaults.max_requests,
            interval_ms=defaults.interval_ms,
            daily=defaults.daily,
        )
        state.set_allow_duplicates(False)
        state.webhooks.configure(None)

    restore()
    yield state
    restore()


@pytest.fixture
def api(sandbox_server: SandboxServer, sandbox: Sandbox) -> Iterator[httpx.Client]:
    """An httpx client for the sandbox API with a valid token and Version header."""
    with httpx.Client(base_url=sandbox_server.url, headers=API_HEADERS, timeout=10) as client:
        yield client


@pytest.fixture
def admin(sandbox_server: SandboxServer, sandbox: Sandbox) -> Iterator[httpx.Client]:
    """An httpx client for the ``/_sandbox`` admin routes (no auth)."""
    with httpx.Client(base_url=f"{sandbox_server.url}/_sandbox", timeout=30) as client:
        yield client
