"""Fault injection: every mode, counts, rates, skips and rule validation."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pydantic
import pytest

from ghlsync_cli.ghl.models import SearchResponse
from ghlsync_cli.sandbox import DEFAULT_LOCATION_ID as LOCATION
from ghlsync_cli.sandbox import FaultRule, Sandbox
from ghlsync_cli.sandbox.faults import FaultInjector

SEARCH = {
    "locationId": LOCATION,
    "pageLimit": 5,
    "sort": [{"field": "dateUpdated", "direction": "asc"}],
}


def _fault(sandbox: Sandbox, **rule: Any) -> None:
    sandbox.faults.set_rules([FaultRule.from_dict({"path_regex": "^/contacts/search$", **rule})])


def test_status_fault_for_the_next_n_requests(api: httpx.Client, sandbox: Sandbox):
    _fault(sandbox, mode="status", status=503, count=2)

    statuses = [api.post("/contacts/search", json=SEARCH).status_code for _ in range(3)]
    first = api.post("/contacts/search", json=SEARCH)

    assert statuses == [503, 503, 200]
    assert first.status_code == 200
    assert sandbox.stats.snapshot()["faults"] == 2
    assert sandbox.faults.rules()[0]["remaining"] == 0


def test_status_fault_body_and_retry_after_for_429(api: httpx.Client, sandbox: Sandbox):
    _fault(sandbox, mode="status", status=429, count=1)

    response = api.post("/contacts/search", json=SEARCH)

    assert response.status_code == 429
    assert response.json() == {"statusCode": 429, "message": "Too Many Requests"}
    assert response.headers["Retry-After"] == "1"


def test_delay_fault_answers_normally_after_waiting(api: httpx.Client, sandbox: Sandbox):
    _fault(sandbox, mode="delay", delay_ms=250, count=1)

    started = time.perf_counter()
    response = api.post("/contacts/search", json=SEARCH)

    assert time.perf_counter() - started >= 0.25
    assert response.status_code == 200
    SearchResponse.model_validate(response.json())


def test_malformed_fault_is_html_with_200(api: httpx.Client, sandbox: Sandbox):
    _fault(sandbox, mode="malformed", count=1)

    response = api.post("/contacts/search", json=SEARCH)

    assert response.status_code == 200
    assert response.text.startswith("<html>")
    with pytest.raises(json.JSONDecodeError):
        response.json()


def test_truncated_fault_cuts_the_real_body(api: httpx.Client, sandbox: Sandbox):
    sandbox.seed(10, seed=1)
    whole = api.post("/contacts/search", json=SEARCH).content
    _fault(sandbox, mode="truncated", count=1)

    response = api.post("/contacts/search", json=SEARCH)

    assert response.status_code == 200
    assert response.content == whole[: len(whole) // 2]
    with pytest.raises(json.JSONDecodeError):
        response.json()


def test_wrong_shape_fault_fails_model_validation(api: httpx.Client, sandbox: Sandbox):
    _fault(sandbox, mode="wrong_shape", count=1)

    response = api.post("/contacts/search", json=SEARCH)

    assert response.status_code == 200
    assert response.json() == {"contacts": "oops", "total": "many"}
    with pytest.raises(pydantic.ValidationError):
        SearchResponse.model_validate(response.json())


def test_wrong_shape_fault_with_a_custom_body_on_a_write(api: httpx.Client, sandbox: Sandbox):
    sandbox.faults.set_rules(
        [FaultRule(path_regex="^/contacts/?$", method="POST", mode="wrong_shape", body=[1, 2])]
    )

    response = api.post("/contacts/", json={"locationId": LOCATION, "firstName": "Written"})

    assert response.status_code == 201
    assert response.json() == [1, 2]
    # The write itself happened: only the answer was garbled.
    assert sandbox.count_contacts() == 1


def test_stuck_cursor_fault_repeats_the_first_page(api: httpx.Client, sandbox: Sandbox):
    sandbox.seed(20, seed=2)
    first = api.post("/contacts/search", json=SEARCH).json()
    cursor = first["contacts"][-1]["searchAfter"]
    _fault(sandbox, mode="stuck_cursor")

    second = api.post("/contacts/search", json={**SEARCH, "searchAfter": cursor}).json()
    third = api.post("/contacts/search", json={**SEARCH, "searchAfter": cursor}).json()

    assert second == first
    assert third == first


def test_reset_fault_drops_the_connection(api: httpx.Client, sandbox: Sandbox):
    _fault(sandbox, mode="reset", count=1)

    with pytest.raises(httpx.TransportError):
        api.post("/contacts/search", json=SEARCH)
    after = api.post("/contacts/search", json=SEARCH)

    assert after.status_code == 200


def test_unauthorized_fault(api: httpx.Client, sandbox: Sandbox):
    _fault(sandbox, mode="unauthorized", count=1)

    response = api.post("/contacts/search", json=SEARCH)

    assert response.status_code == 401
    assert response.json()["message"] == "Invalid JWT"


def test_method_skip_and_other_paths(api: httpx.Client, sandbox: Sandbox):
    sandbox.faults.set_rules(
        [FaultRule(path_regex="^/contacts/", method="GET", mode="status", status=500, skip=1)]
    )

    search = api.post("/contacts/search", json=SEARCH)
    first_get = api.get("/contacts/abc")
    second_get = api.get("/contacts/abc")

    assert search.status_code == 200
    assert first_get.status_code == 400
    assert second_get.status_code == 500


def test_admin_routes_are_never_faulted(admin: httpx.Client, sandbox: Sandbox):
    sandbox.faults.set_rules([FaultRule(path_regex=".*", mode="status", status=500)])

    assert admin.get("/health").status_code == 200


def test_rate_is_seeded_and_repeatable():
    def run() -> list[bool]:
        injector = FaultInjector(seed=5)
        injector.set_rules([FaultRule(path_regex="/", mode="status", rate=0.3)])
        return [injector.pick("GET", "/contacts/x") is not None for _ in range(200)]

    fired = run()

    assert fired == run()
    assert 30 < sum(fired) < 90


@pytest.mark.parametrize(
    "rule",
    [
        {"path_regex": "/", "mode": "explode"},
        {"path_regex": "(", "mode": "status"},
        {"path_regex": "/", "mode": "status", "rate": 2},
        {"path_regex": "/", "mode": "status", "count": "two"},
        {"path_regex": "/", "mode": "status", "colour": "red"},
        {"mode": "status"},
    ],
)
def test_invalid_rules_are_rejected(admin: httpx.Client, rule: dict[str, Any]):
    with pytest.raises(ValueError):
        FaultRule.from_dict(rule)

    response = admin.post("/faults", json={"rules": [rule]})

    assert response.status_code == 400
