"""Direct ``Sandbox`` tests: the clock, name rules, indexes and in-process search speed."""

from __future__ import annotations

import pytest

from ghlsync_cli.sandbox import Sandbox, SandboxApiError
from ghlsync_cli.sandbox.clock import MonotonicClock, iso_from_ms, ms_from_value
from ghlsync_cli.sandbox.fields import apply_changes, parse_changes

LOCATION = "sandboxLocation00001"


@pytest.fixture
def sandbox_for_unit() -> Sandbox:
    return Sandbox()


def test_timestamps_are_strictly_increasing_with_a_frozen_clock():
    sandbox = Sandbox(clock=lambda: 1_625_203_106.704)

    stamps = [sandbox.ui_create_contact({"firstName": f"N{i}"})["dateUpdated"] for i in range(3)]

    assert stamps == [
        "2021-07-02T05:18:26.704Z",
        "2021-07-02T05:18:26.705Z",
        "2021-07-02T05:18:26.706Z",
    ]


def test_clock_observe_and_iso_round_trip():
    clock = MonotonicClock(lambda: 0.0)
    clock.observe(1_000)

    assert clock.tick() == 1_001
    assert iso_from_ms(1_625_203_106_704) == "2021-07-02T05:18:26.704Z"
    assert ms_from_value("2021-07-02T05:18:26.704Z") == 1_625_203_106_704
    assert ms_from_value("2021-07-02T07:18:26.704+02:00") == 1_625_203_106_704
    assert ms_from_value("2021-07-02") == 1_625_184_000_000
    assert ms_from_value(1_625_203_106_704) == 1_625_203_106_704
    assert ms_from_value("1625203106704") == 1_625_203_106_704
    with pytest.raises(ValueError):
        ms_from_value("yesterday")


def test_name_rules():
    def fields(body: dict[str, object], before: dict[str, object] | None = None):
        return apply_changes(before or {}, parse_changes(body))

    assert fields({"name": "Mary Ann Smith"}) == {"firstName": "Mary", "lastName": "Ann Smith"}
    assert fields({"name": "Cher"}) == {"firstName": "Cher"}
    assert fields({"name": "X Y", "firstName": "Ann"}) == {"firstName": "Ann"}
    assert fields({"name": None}, {"firstName": "A", "lastName": "B", "city": "C"}) == {"city": "C"}


def test_update_merges_custom_fields_by_id(sandbox_for_unit: Sandbox):
    contact = sandbox_for_unit.ui_create_contact(
        {"firstName": "C", "customFields": [{"id": "a", "value": "1"}, {"id": "b", "value": "2"}]}
    )

    updated = sandbox_for_unit.ui_update_contact(
        contact["id"],
        {"customFields": [{"id": "b", "field_value": "3"}, {"id": "c", "value": "4"}]},
    )

    assert updated["customFields"] == [
        {"id": "a", "value": "1"},
        {"id": "b", "value": "3"},
        {"id": "c", "value": "4"},
    ]


def test_changing_email_moves_the_duplicate_index(sandbox_for_unit: Sandbox):
    sandbox = sandbox_for_unit
    one = sandbox.ui_create_contact({"email": "one@example.com"})
    sandbox.ui_update_contact(one["id"], {"email": "uno@example.com"})

    sandbox.ui_create_contact({"email": "one@example.com"})
    with pytest.raises(SandboxApiError) as refused:
        sandbox.ui_create_contact({"email": "UNO@example.com"})

    assert refused.value.status == 400
    assert refused.value.body["meta"]["contactId"] == one["id"]


def test_search_pages_through_100k_contacts_by_cursor():
    # Speed is measured by `make bench`; this checks the paging is right at that size.
    sandbox = Sandbox()
    sandbox.seed(100_000, seed=9)
    body = {
        "pageLimit": 500,
        "sort": [{"field": "dateUpdated", "direction": "asc"}],
        "filters": [{"field": "dateUpdated", "operator": "range", "value": {"gte": "2025-01-01"}}],
    }
    first = sandbox.search_contacts(LOCATION, body)
    first.to_json()
    body["searchAfter"] = first.hits[-1][1]
    second = sandbox.search_contacts(LOCATION, body)
    assert len(second.hits) == 500
    assert second.hits[0][1] > first.hits[-1][1]
