"""Fixtures for the sandbox tests: one loopback server per worker, reset before each test."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from ghlsync_cli.sandbox import (
    DEFAULT_TOKEN,
    Sandbox,
    SandboxServer,
)

API_HEADERS = {"Authorization": f"Bearer {DEFAULT_TOKEN}", "Version": "2021-07-28"}


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
