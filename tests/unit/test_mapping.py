"""Mapping and normalisation: round trips and idempotence."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from ghlsync_cli.ghl.models import GhlContact, validate_contact
from ghlsync_cli.mapping import (
    GHL_KEY,
    OUTBOUND_FIELDS,
    from_ghl,
    join_name,
    normalize_phone,
    normalize_tags,
    normalize_value,
    raw_extras,
    split_name,
    to_ghl,
)

text = st.one_of(st.none(), st.text(max_size=20))
phones = st.one_of(
    st.none(),
    st.text(alphabet="0123456789 +()-.", max_size=18),
    st.sampled_from(["(415) 555-0132", "+14155550132", "+919509597501", "020 7946 0958", "12345"]),
)
tag_lists = st.lists(st.text(max_size=8), max_size=5)


@given(phones, st.sampled_from(["US", "GB", "IN", "DE"]))
def test_normalize_phone_is_idempotent(raw: str | None, region: str) -> None:
    once = normalize_phone(raw, region)
    assert normalize_phone(once, region) == once


@given(tag_lists)
def test_normalize_tags_is_idempotent_and_sorted(tags: list[str]) -> None:
    once = normalize_tags(tags)
    assert normalize_tags(once) == once
    assert once == sorted(set(once))
    assert all(t == t.strip().lower() and t for t in once)


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("(415) 555-0132", "US", "+14155550132"),
        ("+14155550132", "US", "+14155550132"),
        ("+1 415-555-0132", "GB", "+14155550132"),
        ("020 7946 0958", "GB", "+442079460958"),
        ("12345", "US", "12345"),  # impossible numbers are kept as written, never dropped
        ("", "US", None),
        (None, "US", None),
    ],
)
def test_normalize_phone_examples(raw: str | None, region: str, expected: str | None) -> None:
    assert normalize_phone(raw, region) == expected


def test_split_name_at_first_space() -> None:
    assert split_name("Mary Ann Smith") == ("Mary", "Ann Smith")
    assert split_name("Cher") == ("Cher", None)
    assert split_name("  ") == (None, None)
    assert join_name("Mary Ann", "Smith") == "Mary Ann Smith"
    assert join_name(None, None) is None


outbound_values = st.fixed_dictionaries(
    {
        "first_name": text,
        "last_name": text,
        "email": text,
        "phone": phones,
        "company": text,
        "address1": text,
        "city": text,
        "state": text,
        "postal_code": text,
        "country": text,
        "tags": tag_lists,
    }
)


@given(outbound_values)
def test_row_to_ghl_and_back_is_identity_on_normalised_values(values: dict[str, Any]) -> None:
    normalized = {f: normalize_value(f, v) for f, v in values.items()}
    body = to_ghl(normalized)
    contact = GhlContact.model_validate({"id": "abc", **body})
    back = from_ghl(contact, complete=False)
    assert {f: back[f] for f in OUTBOUND_FIELDS} == normalized


def test_absent_key_is_not_sent_but_null_clears() -> None:
    partial = GhlContact.model_validate({"id": "x", "email": None, "tags": ["A"]})
    values = from_ghl(partial, complete=False)
    assert values == {"email": None, "tags": ["a"]}
    full = from_ghl(GhlContact.model_validate({"id": "x"}), complete=True)
    assert set(full) == set(GHL_KEY)
    assert full["tags"] == [] and full["dnd"] is False and full["email"] is None


def test_name_alone_is_split_like_ghl() -> None:
    values = from_ghl(
        GhlContact.model_validate({"id": "x", "name": "Mary Ann Smith"}), complete=False
    )
    assert (values["first_name"], values["last_name"]) == ("Mary", "Ann Smith")


def test_unknown_keys_are_kept_in_raw() -> None:
    contact = GhlContact.model_validate(
        {
            "id": "x",
            "firstName": "A",
            "customFields": [{"id": "f1", "value": "v"}],
            "website": "https://example.com",
            "dateAdded": "2024-01-01T00:00:00.000Z",
            "searchAfter": [1, "x"],
        }
    )
    raw = raw_extras(contact)
    assert raw == {
        "customFields": [{"id": "f1", "value": "v"}],
        "website": "https://example.com",
        "dateAdded": "2024-01-01T00:00:00.000Z",
    }


def test_dnd_and_source_never_go_out() -> None:
    assert to_ghl({"dnd": True, "source": "form", "email": "a@b.co"}) == {"email": "a@b.co"}
    assert to_ghl({"email": None, "tags": []}, for_create=True) == {}
    assert to_ghl({"email": None}) == {"email": None}


json_leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=6))
payload_values = st.one_of(json_leaves, st.lists(json_leaves, max_size=3))
payloads = st.dictionaries(
    st.sampled_from(["id", "firstName", "phone", "tags", "dnd", "searchAfter", "dateUpdated", "x"]),
    payload_values,
)


@given(payloads)
def test_validate_contact_is_model_validate(payload: dict[str, Any]) -> None:
    """The validator called directly gives the model, or the error, model_validate gives."""
    try:
        expected = GhlContact.model_validate(payload)
    except ValidationError as exc:
        with pytest.raises(ValidationError) as caught:
            validate_contact(payload)
        assert caught.value.errors() == exc.errors()
        return
    contact = validate_contact(payload)
    assert type(contact) is GhlContact
    assert contact.__dict__ == expected.__dict__
    assert contact.model_fields_set == expected.model_fields_set
    assert contact.model_extra == expected.model_extra
