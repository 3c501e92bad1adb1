"""RatePacer alone and inside GHLClient, against a FakeGHL that enforces GHL's rate limit."""

from __future__ import annotations

import pytest

from ghlsync_cli.errors import UnavailableError
from ghlsync_cli.ghl.pacing import RatePacer

from .conftest import MakeClient
from .fakes import FakeClock, FakeGHL


def run_requests(make_client: MakeClient, count: int) -> None:
    client = make_client()
    for _ in range(count):
        client.search_contacts(page_limit=1)


@pytest.mark.parametrize("latency", [0.0, 0.03, 0.12])
def test_250_requests_run_at_the_limit_with_no_429(
    make_client: MakeClient, fake: FakeGHL, clock: FakeClock, latency: float
) -> None:
    fake.rate_max, fake.latency = 100, latency
    started = clock()

    run_requests(make_client, 250)

    elapsed = clock() - started
    assert fake.rate_limited == 0
    assert len(fake.requests) == 250
    # Floor for one request at a time: the third window opens 20 s after the first, then its 50
    # requests take 50 round trips; unless round trips alone take longer than that.
    floor = max(20.0 + 50 * latency, 250 * latency)
    assert 20.0 <= elapsed <= 1.1 * floor


def test_limits_are_learned_from_the_headers(
    make_client: MakeClient, fake: FakeGHL, clock: FakeClock
) -> None:
    fake.rate_max, fake.rate_interval = 40, 4.0
    started = clock()

    run_requests(make_client, 100)

    assert fake.rate_limited == 0
    assert 8.0 <= clock() - started <= 8.5


def test_remaining_zero_from_another_process_waits_a_full_interval(
    make_client: MakeClient, fake: FakeGHL, clock: FakeClock
) -> None:
    fake.rate_max = 100
    fake.foreign_requests(99)
    started = clock()

    run_requests(make_client, 2)

    assert fake.rate_limited == 0
    assert clock.sleeps and clock.sleeps[0] >= 10.0
    assert clock() - started <= 10.5


def test_an_exhausted_daily_limit_stops_without_sleeping(
    make_client: MakeClient, fake: FakeGHL, clock: FakeClock
) -> None:
    fake.daily_limit = 3
    client = make_client()
    for _ in range(3):
        client.search_contacts(page_limit=1)

    with pytest.raises(UnavailableError, match="daily API limit of 3 requests") as info:
        client.search_contacts(page_limit=1)

    assert info.value.hint is not None
    assert "midnight" in info.value.hint
    assert len(fake.requests) == 3
    assert clock.sleeps == []


def test_a_sliding_window_of_completions() -> None:
    clock = FakeClock(start=0.0)
    pacer = RatePacer(max_requests=3, interval=10.0, margin=0.0, clock=clock, sleep=clock.sleep)
    for moment in (0.0, 1.0, 2.0):
        clock.now = moment
        assert pacer.acquire() == 0.0
        pacer.record()

    clock.now = 4.0
    assert pacer.delay() == 6.0  # until the response at t=0 leaves the window
    assert pacer.acquire() == 6.0
    pacer.record()
    assert clock.sleeps == [6.0]
    assert pacer.delay() == 1.0  # then the one at t=1


def test_headers_update_limits_and_garbage_is_ignored() -> None:
    clock = FakeClock(start=0.0)
    pacer = RatePacer(clock=clock, sleep=clock.sleep)
    pacer.acquire()
    pacer.record(
        {
            "x-ratelimit-max": "25",
            "X-RateLimit-Interval-Milliseconds": "5000",
            "X-RateLimit-Remaining": "soon",
            "X-RateLimit-Daily-Remaining": "nan",
        }
    )

    assert (pacer.max_requests, pacer.interval) == (25, 5.0)
    assert pacer.daily_remaining is None
    assert pacer.delay() == 0.0
