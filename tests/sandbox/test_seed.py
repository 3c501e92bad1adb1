"""Deterministic seeding: same seed, same contacts; realistic and unique data."""

from __future__ import annotations

import re

import phonenumbers
import pytest

from ghlsync_cli.ghl.models import GhlContact
from ghlsync_cli.sandbox import Sandbox
from ghlsync_cli.sandbox.clock import ms_from_value
from ghlsync_cli.sandbox.seed import generate_contacts

START_2024 = ms_from_value("2024-01-01T00:00:00Z")
END_2025 = ms_from_value("2026-01-01T00:00:00Z")


def test_same_seed_same_contacts_other_seed_other_contacts():
    first = [r.to_dict() for r in generate_contacts(300, 42, location_id="loc")]
    again = [r.to_dict() for r in generate_contacts(300, 42, location_id="loc")]
    other = [r.to_dict() for r in generate_contacts(300, 43, location_id="loc")]

    assert first == again
    assert [c["id"] for c in first] != [c["id"] for c in other]


def test_seeded_data_is_unique_valid_and_varied():
    contacts = [r.to_dict() for r in generate_contacts(2000, 7, location_id="loc")]

    ids = [c["id"] for c in contacts]
    emails = [c["email"].lower() for c in contacts if "email" in c]
    phones = [c["phone"] for c in contacts if "phone" in c]
    added = [ms_from_value(c["dateAdded"]) for c in contacts]
    updated = [ms_from_value(c["dateUpdated"]) for c in contacts]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[A-Za-z0-9]{20}", i) for i in ids)
    assert len(set(emails)) == len(emails)
    assert len(set(phones)) == len(phones)
    assert all(phonenumbers.is_possible_number(phonenumbers.parse(p)) for p in phones)
    assert all(p.startswith("+1") and len(p) == 12 for p in phones)
    assert len(set(added)) == len(added)
    assert len(set(updated)) == len(updated)
    assert all(START_2024 <= a <= u < END_2025 for a, u in zip(added, updated, strict=True))
    assert all(("email" in c) or ("phone" in c) for c in contacts)
    assert any(" " in c["firstName"] for c in contacts)
    assert any(c["email"] != c["email"].lower() for c in contacts if "email" in c)
    assert any("address1" not in c for c in contacts)
    assert any("phone" not in c for c in contacts)
    assert all(t == t.lower() and len(c["tags"]) <= 3 for c in contacts for t in c["tags"])
    assert any(c["customFields"] for c in contacts)
    assert any("website" in c for c in contacts)
    assert all(c["type"] in ("lead", "customer") for c in contacts)
    assert any(c["dnd"] for c in contacts)
    for contact in contacts[:50]:
        GhlContact.model_validate(contact)


def test_seed_replaces_and_later_changes_are_newer(sandbox: Sandbox):
    sandbox.seed(100, seed=1)
    sandbox.seed(50, seed=2)
    newest = max(ms_from_value(c["dateUpdated"]) for c in sandbox.list_contacts())

    created = sandbox.ui_create_contact({"firstName": "Later"})

    assert sandbox.count_contacts() == 51
    assert ms_from_value(created["dateUpdated"]) > newest


def test_seeding_the_same_ids_twice_without_replace_fails(sandbox: Sandbox):
    sandbox.seed(10, seed=1)

    with pytest.raises(ValueError, match="already exists"):
        sandbox.seed(10, seed=1, replace=False)
    assert sandbox.count_contacts() == 10
