"""The three-way merge, table-driven, plus properties of the tag set merge."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ghlsync_cli.sync.merge import local_values, merge, merge_tags, pending_changes


def values(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "first_name": None,
        "last_name": None,
        "email": None,
        "phone": None,
        "company": None,
        "address1": None,
        "city": None,
        "state": None,
        "postal_code": None,
        "country": None,
        "tags": [],
        "dnd": False,
        "source": None,
    }
    base.update(kw)
    return base


@pytest.mark.parametrize(
    ("local", "base", "remote", "expected", "conflict"),
    [
        ("a", "a", "b", "b", False),  # only GHL changed
        ("b", "a", "a", "b", False),  # only we changed
        ("b", "a", "b", "b", False),  # both changed the same way
        ("b", "a", "c", "c", True),  # both changed differently: GHL wins, recorded
        ("a", "a", None, None, False),  # GHL cleared it
        (None, "a", "a", None, False),  # we cleared it
        ("x", None, "y", "y", True),  # first link, both set differently
        ("x", None, None, "x", False),  # first link, only we have it
    ],
)
def test_scalar_three_way(
    local: Any, base: Any, remote: Any, expected: Any, conflict: bool
) -> None:
    result = merge(values(email=local), values(email=base), {"email": remote})
    assert result.values["email"] == expected
    assert bool(result.conflicts) is conflict
    assert result.base["email"] == remote
    if conflict:
        c = result.conflicts[0]
        assert (c.field, c.local_value, c.ghl_value, c.base_value) == ("email", local, remote, base)


def test_absent_remote_key_keeps_local_and_base() -> None:
    result = merge(values(city="Paris"), values(city="Rome"), {"email": "a@b.co"})
    assert result.values["city"] == "Paris"
    assert result.base["city"] == "Rome"
    assert result.needs_push
    assert pending_changes(result.values, result.base) == {"city": "Paris"}


def test_one_side_each_merges_without_conflict() -> None:
    base = values(email="old@x.co", city="Rome")
    local = values(email="old@x.co", city="Paris")
    remote = values(email="new@x.co", city="Rome")
    result = merge(local, base, remote)
    assert (result.values["email"], result.values["city"]) == ("new@x.co", "Paris")
    assert not result.conflicts
    assert pending_changes(result.values, result.base) == {"city": "Paris"}


def test_inbound_only_fields_follow_ghl() -> None:
    result = merge(values(dnd=False, source="mine"), values(), {"dnd": True, "source": "form"})
    assert result.values["dnd"] is True and result.values["source"] == "form"
    assert not result.conflicts


def test_tags_merge_as_sets() -> None:
    assert merge_tags(["a", "b", "l"], ["a", "b"], ["a", "r"]) == ["a", "l", "r"]


tag = st.sampled_from(list("abcdef"))


@given(st.sets(tag), st.sets(tag), st.sets(tag))
def test_tag_merge_keeps_every_add_and_honours_removes(
    local: set[str], base: set[str], remote: set[str]
) -> None:
    merged = set(merge_tags(sorted(local), sorted(base), sorted(remote)))
    assert (local - base) <= merged and (remote - base) <= merged  # adds survive
    assert not ((base - local) & merged - (remote - base))  # our removes apply
    assert not ((base - remote) & merged - (local - base))  # their removes apply


@given(st.sets(tag), st.sets(tag))
def test_merge_is_idempotent(local: set[str], remote: set[str]) -> None:
    first = merge(values(tags=sorted(local)), None, {"tags": sorted(remote)})
    second = merge(first.values, first.base, {"tags": sorted(remote)})
    assert second.values == first.values and second.base == first.base


def test_name_edited_alone_is_split() -> None:
    row = values(first_name="Mary Ann", last_name="Smith")
    row["name"] = "Mary Ann Smith"
    assert local_values(row)["first_name"] == "Mary Ann"  # untouched name keeps the split
    row["name"] = "Maria Smith-Jones"
    got = local_values(row)
    assert (got["first_name"], got["last_name"]) == ("Maria", "Smith-Jones")
