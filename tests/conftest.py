"""Isolation for every test: no real keyring, no user config, no GHLSYNC_* from the caller."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import keyring
import pytest
from hypothesis import HealthCheck, settings

from ghlsync_cli.sandbox import Sandbox, SandboxConfig, SandboxServer
from ghlsync_cli.sandbox.ratelimit import RateLimitSettings
from tests.fakes import MemoryKeyring
from tests.helpers import Cli

settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=20, deadline=None)
settings.register_profile("deterministic", max_examples=60, deadline=None, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Fast, bounded retries everywhere in tests; real backoff is exercised by the client's own tests.
TEST_ENV = {
    "GHLSYNC_RETRY_WAIT_INITIAL": "0.01",
    "GHLSYNC_RETRY_WAIT_MAX": "0.05",
    "GHLSYNC_RETRY_ATTEMPTS": "4",
    "GHLSYNC_BUSY_TIMEOUT_MS": "5000",
    "COLUMNS": "200",
    "NO_COLOR": "1",
}


@pytest.fixture(autouse=True)
def _isolate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MemoryKeyring]:
    for name in list(os.environ):
        if name.startswith("GHLSYNC_") or name in ("CREDENTIALS_DIRECTORY",):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ("XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME"):
        monkeypatch.setenv(var, str(home / var.lower()))
    monkeypatch.setenv("GHLSYNC_CONFIG", str(tmp_path / "no-config.toml"))
    for name, value in TEST_ENV.items():
        monkeypatch.setenv(name, value)
    ring = MemoryKeyring()
    previous = keyring.get_keyring()
    keyring.set_keyring(ring)
    yield ring
    keyring.set_keyring(previous)


@pytest.fixture
def memory_keyring(_isolate: MemoryKeyring) -> MemoryKeyring:
    """The in-memory keyring installed for this test."""
    return _isolate


@pytest.fixture(scope="session")
def sandbox_server() -> Iterator[SandboxServer]:
    """One sandbox on loopback per test worker (reset around each test by ``sandbox``)."""
    with SandboxServer(SandboxConfig(rate_limit_enabled=False)) as server:
        yield server


@pytest.fixture
def sandbox(sandbox_server: SandboxServer) -> Iterator[Sandbox]:
    """The shared sandbox, emptied and set back to defaults around each test."""
    state = sandbox_server.sandbox

    def restore() -> None:
        state.webhooks.configure(None)
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
        state.faults.clear()
        state.stats.reset()

    restore()
    yield state
    restore()


@pytest.fixture
def cli(tmp_path: Path, sandbox_server: SandboxServer, sandbox: Sandbox) -> Cli:
    """The ghlsync CLI pointed at a fresh database and the (reset) sandbox."""
    return Cli(db=tmp_path / "ghlsync.db", api_base=sandbox_server.url)
