"""iter_contact_pages: following searchAfter, stopping, and refusing to loop on a stuck cursor."""

from __future__ import annotations

import json

import httpx
import pytest

from ghlsync_cli.errors import MalformedResponseError
from ghlsync_cli.ghl.client import GHLClient

from .fakes import FakeGHL


def cursors_sent(fake: FakeGHL) -> list[object]:
    return [json.loads(r.content).get("searchAfter") for r in fake.requests]


def page_of(ids: list[str], cursors: list[list[object] | None]) -> httpx.Response:
    contacts = []
    for contact_id, cursor in zip(ids, cursors, strict=True):
        contact: dict[str, object] = {"id": contact_id}
        if cursor is not None:
            contact["searchAfter"] = cursor
        contacts.append(contact)
    return httpx.Response(200, json={"contacts": contacts, "total": 99})


def test_pages_follow_the_last_contacts_search_after(client: GHLClient, fake: FakeGHL) -> None:
    made = [fake.add_contact(firstName=f"P{n}")["id"] for n in range(7)]

    pages = list(client.iter_contact_pages(page_limit=3))

    assert [len(p.contacts) for p in pages] == [3, 3, 1]
    assert [c.id for p in pages for c in p.contacts] == made
    assert cursors_sent(fake) == [
        None,
        pages[0].contacts[-1].searchAfter,
        pages[1].contacts[-1].searchAfter,
    ]
    assert all(p.total == 7 for p in pages)


def test_an_exactly_full_last_page_ends_with_an_empty_page(
    client: GHLClient, fake: FakeGHL
) -> None:
    for n in range(6):
        fake.add_contact(firstName=f"P{n}")

    pages = list(client.iter_contact_pages(page_limit=3))

    assert [len(p.contacts) for p in pages] == [3, 3, 0]


def test_pages_resume_from_a_cursor_and_filter_by_date(client: GHLClient, fake: FakeGHL) -> None:
    contacts = [fake.add_contact(firstName=f"P{n}") for n in range(5)]
    first = client.search_contacts(page_limit=1)
    cursor = first.contacts[0].searchAfter
    assert cursor is not None

    pages = list(
        client.iter_contact_pages(
            page_limit=2, search_after=cursor, updated_since=contacts[0]["dateUpdated"]
        )
    )

    assert [c.id for p in pages for c in p.contacts] == [c["id"] for c in contacts[1:]]
    assert json.loads(fake.requests[1].content)["filters"][0]["value"] == {
        "gte": contacts[0]["dateUpdated"]
    }


def test_a_repeated_cursor_stops_instead_of_looping(client: GHLClient, fake: FakeGHL) -> None:
    fake.fail_next(page_of(["a", "b"], [[1, "a"], [2, "b"]]), times=50)

    pages = client.iter_contact_pages(page_limit=2)
    assert [c.id for c in next(pages).contacts] == ["a", "b"]
    with pytest.raises(MalformedResponseError, match="pagination cursor did not advance"):
        next(pages)

    assert len(fake.requests) == 2


def test_a_cursor_that_cycles_back_is_caught(client: GHLClient, fake: FakeGHL) -> None:
    fake.fail_next(page_of(["a"], [[1, "a"]]))
    fake.fail_next(page_of(["b"], [[2, "b"]]))
    fake.fail_next(page_of(["a"], [[1, "a"]]), times=50)

    with pytest.raises(MalformedResponseError, match="did not advance"):
        list(client.iter_contact_pages(page_limit=1))

    assert len(fake.requests) == 3


def test_a_full_page_without_a_cursor_is_malformed(client: GHLClient, fake: FakeGHL) -> None:
    fake.fail_next(page_of(["a", "b"], [[1, "a"], None]), times=50)

    with pytest.raises(MalformedResponseError, match="did not advance"):
        next(client.iter_contact_pages(page_limit=2))

    assert len(fake.requests) == 1


def test_the_starting_cursor_counts_as_seen(client: GHLClient, fake: FakeGHL) -> None:
    fake.fail_next(page_of(["a"], [[5, "a"]]), times=50)

    with pytest.raises(MalformedResponseError):
        next(client.iter_contact_pages(page_limit=1, search_after=[5, "a"]))
