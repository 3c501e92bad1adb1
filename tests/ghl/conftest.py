"""Fixtures for the GHL client tests: a fake clock, a fake GHL, and a client wired to both."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from ghlsync_cli.ghl.client import GHLClient, RetryPolicy, build_http_client
from ghlsync_cli.ghl.pacing import RatePacer

from .fakes import LOCATION_ID, TOKEN, FakeClock, FakeGHL, StaticBearer

MakeClient = Callable[..., GHLClient]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake(clock: FakeClock) -> FakeGHL:
    return FakeGHL(clock=clock)


@pytest.fixture
def make_client(fake: FakeGHL, clock: FakeClock) -> Iterator[MakeClient]:
    """Build a GHLClient on ``fake`` through httpx.MockTransport; every wait goes to ``clock``."""
    clients: list[GHLClient] = []

    def make(
        *,
        token: str = TOKEN,
        retry: RetryPolicy | None = None,
        pacer: RatePacer | None = None,
        **kwargs: Any,
    ) -> GHLClient:
        http = build_http_client(
            "https://ghl.test",
            auth=StaticBearer(token),
            transport=httpx.MockTransport(fake),
        )
        client = GHLClient(
            http,
            location_id=LOCATION_ID,
            retry=retry or RetryPolicy(wait_jitter=0.0),
            pacer=pacer,
            sleep=clock.sleep,
            clock=clock,
            **kwargs,
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(make_client: MakeClient) -> GHLClient:
    return make_client()
