"""GHL's burst and daily limits: 429 with Retry-After, and the X-RateLimit-* headers."""

from __future__ import annotations

import time

import httpx

from ghlsync_cli.sandbox import DEFAULT_LOCATION_ID as LOCATION
from ghlsync_cli.sandbox import RateLimitSettings, Sandbox
from ghlsync_cli.sandbox.ratelimit import RateLimiter

RATE_HEADERS = (
    "X-RateLimit-Limit-Daily",
    "X-RateLimit-Daily-Remaining",
    "X-RateLimit-Interval-Milliseconds",
    "X-RateLimit-Max",
    "X-RateLimit-Remaining",
)


def test_sixth_quick_request_gets_429_with_retry_after(api: httpx.Client, sandbox: Sandbox):
    sandbox.rate_limiter.configure(enabled=True, max_requests=5, interval_ms=500)
    body = {"locationId": LOCATION, "pageLimit": 1}

    responses = [api.post("/contacts/search", json=body) for _ in range(6)]

    assert [r.status_code for r in responses] == [200] * 5 + [429]
    assert [r.headers["X-RateLimit-Remaining"] for r in responses[:5]] == ["4", "3", "2", "1", "0"]
    for response in responses:
        assert all(name in response.headers for name in RATE_HEADERS)
        assert response.headers["X-RateLimit-Max"] == "5"
        assert response.headers["X-RateLimit-Interval-Milliseconds"] == "500"
        assert response.headers["X-RateLimit-Limit-Daily"] == "200000"
    limited = responses[-1]
    assert limited.json() == {"statusCode": 429, "message": "Too Many Requests"}
    assert limited.headers["Retry-After"] == "1"
    assert sandbox.stats.snapshot()["rate_limited"] == 1

    time.sleep(0.55)
    assert api.post("/contacts/search", json=body).status_code == 200


def test_unauthenticated_requests_carry_no_rate_headers(sandbox_server, sandbox: Sandbox):
    with httpx.Client(base_url=sandbox_server.url) as client:
        response = client.get("/contacts/abc")

    assert response.status_code == 401
    assert "X-RateLimit-Remaining" not in response.headers


def test_retry_after_counts_down_to_when_the_window_frees():
    now = [100.0]
    limiter = RateLimiter(
        RateLimitSettings(max_requests=2, interval_ms=10_000),
        monotonic=lambda: now[0],
        clock=lambda: 1_700_000_000.0,
    )

    assert limiter.check("loc").allowed
    now[0] += 3.0
    assert limiter.check("loc").allowed
    refused = limiter.check("loc")
    now[0] += 6.5
    still_refused = limiter.check("loc")
    now[0] += 0.6
    freed = limiter.check("loc")

    assert not refused.allowed
    assert refused.retry_after_s == 7
    assert refused.headers["Retry-After"] == "7"
    assert still_refused.retry_after_s == 1
    assert freed.allowed
    assert limiter.check("other-location").allowed


def test_daily_limit_and_disabled_limiter():
    limiter = RateLimiter(
        RateLimitSettings(max_requests=100, interval_ms=1000, daily=3),
        monotonic=lambda: 0.0,
        clock=lambda: 86_400.0 * 20_000 + 3600,
    )

    decisions = [limiter.check("loc") for _ in range(4)]
    limiter.configure(enabled=False)
    relaxed = [limiter.check("loc").allowed for _ in range(10)]

    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert decisions[2].headers["X-RateLimit-Daily-Remaining"] == "0"
    assert decisions[3].retry_after_s == 23 * 3600
    assert all(relaxed)
