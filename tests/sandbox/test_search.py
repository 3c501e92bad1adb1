"""POST /contacts/search: paging, sorting, filters and validation, over real HTTP."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from ghlsync_cli.ghl.models import SearchResponse
from ghlsync_cli.sandbox import DEFAULT_LOCATION_ID as LOCATION
from ghlsync_cli.sandbox import Sandbox
from ghlsync_cli.sandbox.clock import iso_from_ms, ms_from_value


def _page_all(api: httpx.Client, body: dict[str, Any]) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    request = {"locationId": LOCATION, **body}
    for _ in range(100):
        response = api.post("/contacts/search", json=request)
        assert response.status_code == 200, response.text
        page = SearchResponse.model_validate(response.json())
        seen.extend(contact.model_dump() for contact in page.contacts)
        if len(page.contacts) < request["pageLimit"]:
            return seen
        request["searchAfter"] = page.contacts[-1].searchAfter
    raise AssertionError("paging did not end")


def test_search_after_pages_every_contact_once_in_order(api: httpx.Client, sandbox: Sandbox):
    sandbox.seed(1234, seed=11)

    seen = _page_all(
        api, {"pageLimit": 500, "sort": [{"field": "dateUpdated", "direction": "asc"}]}
    )

    ids = [contact["id"] for contact in seen]
    assert len(ids) == 1234
    assert len(set(ids)) == 1234
    keys = [(ms_from_value(c["dateUpdated"]), c["id"]) for c in seen]
    assert keys == sorted(keys)
    assert all(c["searchAfter"] == [ms_from_value(c["dateUpdated"]), c["id"]] for c in seen)


def test_default_sort_is_date_added_descending(api: httpx.Client, sandbox: Sandbox):
    sandbox.seed(1234, seed=12)

    seen = _page_all(api, {"pageLimit": 500})

    keys = [(ms_from_value(c["dateAdded"]), c["id"]) for c in seen]
    assert len(keys) == 1234
    assert keys == sorted(keys, reverse=True)


def test_string_sort_pages_every_contact_once(api: httpx.Client, sandbox: Sandbox):
    sandbox.seed(700, seed=13)

    seen = _page_all(
        api, {"pageLimit": 200, "sort": [{"field": "lastNameLowerCase", "direction": "desc"}]}
    )

    assert len({c["id"] for c in seen}) == 700
    keys = [((c["lastName"] or "").lower(), c["id"]) for c in seen]
    assert keys == sorted(keys, reverse=True)


def test_date_updated_range_filter(api: httpx.Client, sandbox: Sandbox):
    sandbox.seed(1234, seed=14)
    stamps = sorted(ms_from_value(c["dateUpdated"]) for c in sandbox.list_contacts())
    low, high = stamps[300], stamps[900]
    expected = sum(1 for stamp in stamps if low < stamp <= high)

    body = {
        "pageLimit": 100,
        "sort": [{"field": "dateUpdated", "direction": "asc"}],
        "filters": [
            {
                "field": "dateUpdated",
                "operator": "range",
                "value": {"gt": iso_from_ms(low), "lte": high},
            }
        ],
    }
    first = api.post("/contacts/search", json={"locationId": LOCATION, **body}).json()
    seen = _page_all(api, body)

    assert first["total"] == expected == 600
    assert len(seen) == expected
    assert all(low < ms_from_value(c["dateUpdated"]) <= high for c in seen)


def test_page_number_paging_and_window_limit(api: httpx.Client, sandbox: Sandbox):
    sandbox.seed(30, seed=15)
    body = {"locationId": LOCATION, "pageLimit": 10, "sort": [{"field": "dateAdded"}]}

    pages = [api.post("/contacts/search", json={**body, "page": n}).json() for n in (1, 2, 3)]
    too_deep = api.post("/contacts/search", json={**body, "pageLimit": 500, "page": 21})

    ids = [c["id"] for page in pages for c in page["contacts"]]
    assert len(set(ids)) == 30
    assert too_deep.status_code == 400
    assert "searchAfter" in too_deep.json()["message"]


def test_email_phone_id_and_query_filters(api: httpx.Client, sandbox: Sandbox):
    sandbox.seed(200, seed=16)
    target = next(c for c in sandbox.list_contacts() if c.get("email") and c.get("phone"))

    def search(**extra: Any) -> dict[str, Any]:
        response = api.post(
            "/contacts/search", json={"locationId": LOCATION, "pageLimit": 50, **extra}
        )
        assert response.status_code == 200, response.text
        return response.json()

    by_email = search(
        filters=[{"field": "email", "operator": "eq", "value": target["email"].upper()}]
    )
    by_phone = search(filters=[{"field": "phone", "operator": "eq", "value": target["phone"]}])
    by_id = search(filters=[{"field": "id", "operator": "eq", "value": target["id"]}])
    by_query = search(query=target["lastName"].upper())

    assert [c["id"] for c in by_email["contacts"]] == [target["id"]]
    assert [c["id"] for c in by_phone["contacts"]] == [target["id"]]
    assert [c["id"] for c in by_id["contacts"]] == [target["id"]]
    assert target["id"] in {c["id"] for c in by_query["contacts"]}
    assert all(target["lastName"].lower() in c["fullNameLowerCase"] for c in by_query["contacts"])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"pageLimit": 501}, "pageLimit must not be greater than 500"),
        ({"pageLimit": 0}, "pageLimit must not be less than 1"),
        ({}, "pageLimit must be an integer number"),
        ({"pageLimit": 10, "page": 0}, "page must not be less than 1"),
        ({"pageLimit": 10, "sort": [{"field": "phone"}]}, "sort.0.field must be one of"),
        (
            {"pageLimit": 10, "filters": [{"field": "tags", "operator": "eq", "value": "x"}]},
            "unsupported filter",
        ),
        (
            {
                "pageLimit": 10,
                "filters": [{"field": "dateAdded", "operator": "range", "value": {}}],
            },
            "filters.0.value",
        ),
        ({"pageLimit": 10, "searchAfter": "abc"}, "searchAfter must be"),
    ],
)
def test_invalid_search_bodies_get_422(
    api: httpx.Client, sandbox: Sandbox, body: dict[str, Any], message: str
):
    response = api.post("/contacts/search", json={"locationId": LOCATION, **body})

    assert response.status_code == 422
    payload = response.json()
    assert payload["statusCode"] == 422
    assert payload["error"] == "Unprocessable Entity"
    assert any(message in text for text in payload["message"]), payload


def test_search_in_process_matches_http(sandbox: Sandbox):
    sandbox.seed(50, seed=17)

    page = sandbox.search_contacts(LOCATION, {"pageLimit": 10})

    assert page.total == 50
    assert len(page.hits) == 10
    assert SearchResponse.model_validate_json(page.to_json()).total == 50
    assert page.to_dict()["contacts"][0]["searchAfter"] == page.hits[0][1]
