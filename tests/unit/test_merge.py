"""The three-way merge, table-driven, plus properties of the tag set merge."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ghlsync_cli.mapping import SYNC_FIELDS, normalize_values
from ghlsync_cli.sync.merge import local_values, merge, merge_row, merge_tags, pending_changes


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


def test_a_name_left_stale_by_an_edit_of_first_or_last_name_is_not_an_edit() -> None:
    base = values(first_name="Mary Ann", last_name="Smith")
    stale = {**base, "name": "Mary Ann Smith"}  # another program changed a part, not the name
    for part, edited in (("first_name", "Marianne"), ("last_name", None), ("first_name", " Mo")):
        got = local_values({**stale, part: edited}, base)
        assert got[part] == edited and got["last_name" if part == "first_name" else "first_name"]
    # The name edited alone is still split, with or without the base.
    renamed = local_values({**base, "name": "Maria Smith-Jones"}, base)
    assert (renamed["first_name"], renamed["last_name"]) == ("Maria", "Smith-Jones")


# Values as another program may store them (padded, cased, a phone as typed, dnd as 0/1) or as
# ghlsync stores them: small alphabets, so sides often agree.
_stored_text = st.one_of(st.none(), st.sampled_from(["", " ", "a", " a", "b", "A"]))
_stored = {
    **{name: _stored_text for name in SYNC_FIELDS},
    "phone": st.one_of(
        st.none(), st.sampled_from(["+14155550132", "(415) 555-0132", " +14155550132", "12345"])
    ),
    "tags": st.lists(st.sampled_from(["a", "b", " a", "B", ""]), max_size=3),
    "dnd": st.sampled_from([False, True, 0, 1]),
}
stored_values = st.fixed_dictionaries(_stored)
sent_values = st.fixed_dictionaries({}, optional=_stored)


@given(stored_values, stored_values, sent_values, st.booleans(), st.sampled_from(["US", "GB"]))
def test_merge_row_is_the_merge_of_the_normalised_row(
    local: dict[str, Any], base: dict[str, Any], remote: dict[str, Any], agreed: bool, region: str
) -> None:
    # A base copy, and what GHL sends, hold normalised values; the row holds anything, often
    # exactly the base (what was last agreed).
    base = normalize_values(base, region)
    remote = normalize_values(remote, region)
    if agreed:
        local = dict(base)
    expected = merge(normalize_values(local, region), base, remote)
    got = merge_row(local, base, remote, region)
    assert list(got.values.items()) == list(expected.values.items())
    assert got.base == expected.base and got.conflicts == expected.conflicts
    assert got.needs_push is expected.needs_push
    assert merge_row(local, None, remote, region) == merge(
        normalize_values(local, region), None, remote
    )
