"""Deterministic, realistic contacts for the sandbox: the same seed always gives the same data.

The data is shaped to exercise what a real location throws at a sync: two-word first names
("Mary Ann"), accents and apostrophes, emails with capitals, some contacts without phone or
email or address, lowercase tags, and keys ghlsync does not map (``type``, ``customFields``,
``website``, ``timezone``) that must survive a round trip. Emails use reserved example domains and
phones are syntactically valid US numbers, so nothing here can reach a real person.
"""

from __future__ import annotations

import itertools
import random
import string
import unicodedata
from typing import Any

from ghlsync_cli.sandbox.contact import ContactRecord

_ID_ALPHABET = string.ascii_letters + string.digits
_ID_LENGTH = 20

#: 2024-01-01T00:00:00Z and 2025-12-31T23:59:59.999Z in epoch ms.
_START_MS = 1_704_067_200_000
_END_MS = 1_767_225_599_999

_FIRST_NAMES = (
    "James", "Mary", "Robert", "Patricia", "John", "Jennifer", "Michael", "Linda", "David",
    "Elizabeth", "William", "Barbara", "Richard", "Susan", "Joseph", "Jessica", "Thomas", "Sarah",
    "Charles", "Karen", "Daniel", "Lisa", "Matthew", "Nancy", "Anthony", "Sandra", "Mark", "Ashley",
    "Donald", "Emily", "Steven", "Michelle", "Andrew", "Amanda", "Joshua", "Melissa", "Kevin",
    "Stephanie", "Brian", "Rebecca", "George", "Laura", "Timothy", "Sharon", "Ronald", "Cynthia",
    "Jason", "Kathleen", "Ryan", "Amy", "Jacob", "Angela", "Nicholas", "Shirley", "Eric", "Anna",
    "Mary Ann", "Anna Maria", "Jean Luc", "Mary Beth", "Billy Bob", "Sue Ellen", "José", "Zoë",
    "Renée", "Chloé", "Søren", "Aaliyah", "Mateo", "Priya", "Wei", "Fatima", "Olumide", "Siobhán",
)  # fmt: skip
_LAST_NAMES = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez",
    "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor",
    "Moore", "Jackson", "Martin", "Lee", "Perez", "Thompson", "White", "Harris", "Sanchez", "Clark",
    "Ramirez", "Lewis", "Robinson", "Walker", "Young", "Allen", "King", "Wright", "Scott", "Torres",
    "Nguyen", "Hill", "Flores", "Green", "Adams", "Nelson", "Baker", "Hall", "Rivera", "Campbell",
    "O'Brien", "O'Connor", "McDonald", "García", "Müller", "Van Buren", "De la Cruz", "Nakamura",
    "Okafor", "Kowalski", "Patel", "Chen", "Andersson", "Schmidt", "Dubois", "Rossi", "Ivanova",
)  # fmt: skip
_EMAIL_DOMAINS = ("example.com", "example.org", "example.net", "mail.example.com", "corp.example")
_COMPANIES = (
    "Acme Corp", "Globex", "Initech", "Umbrella Group", "Stark Industries", "Wayne Enterprises",
    "Hooli", "Vandelay Industries", "Soylent Co", "Cyberdyne Systems", "Wonka Industries",
    "Dunder Mifflin", "Pied Piper", "Massive Dynamic", "Tyrell Corp", "Gringotts",
    "Monarch Solutions", "Bluth Company", "Prestige Worldwide", "Oceanic Airlines",
)  # fmt: skip
#: (city, state, ZIP prefix, area codes) — real combinations, so addresses look plausible.
_CITIES = (
    ("New York", "NY", "100", ("212", "646", "917")),
    ("Los Angeles", "CA", "900", ("213", "310", "323")),
    ("Chicago", "IL", "606", ("312", "773")),
    ("Houston", "TX", "770", ("713", "832")),
    ("Phoenix", "AZ", "850", ("602", "480")),
    ("Philadelphia", "PA", "191", ("215", "267")),
    ("San Antonio", "TX", "782", ("210",)),
    ("San Diego", "CA", "921", ("619", "858")),
    ("Dallas", "TX", "752", ("214", "469")),
    ("Austin", "TX", "787", ("512", "737")),
    ("Seattle", "WA", "981", ("206",)),
    ("Denver", "CO", "802", ("303", "720")),
    ("Boston", "MA", "021", ("617", "857")),
    ("Miami", "FL", "331", ("305", "786")),
    ("Atlanta", "GA", "303", ("404", "678")),
    ("Portland", "OR", "972", ("503", "971")),
    ("Nashville", "TN", "372", ("615", "629")),
    ("Minneapolis", "MN", "554", ("612",)),
    ("Detroit", "MI", "482", ("313",)),
    ("Salt Lake City", "UT", "841", ("801", "385")),
)
_STREETS = (
    "Main St", "Oak Ave", "Maple Dr", "Cedar Ln", "Pine St", "Elm St", "Washington Blvd",
    "Lake Shore Dr", "Park Ave", "Sunset Blvd", "1st St N", "Broadway", "Market St", "Hillcrest Rd",
)  # fmt: skip
_TAGS = ("customer", "lead", "vip", "newsletter", "prospect", "partner", "webinar", "churned")
_TAG_COUNTS = (0, 0, 1, 1, 1, 2, 2, 3)
#: Every ordered choice of 0 to 3 distinct tags, by size (``random.sample`` is slow at 100k).
_TAG_CHOICES = {size: tuple(itertools.permutations(_TAGS, size)) for size in set(_TAG_COUNTS)}
_SOURCES = ("public api", "website form", "facebook lead ad", "import", "referral", "manual entry")
_TIMEZONES = ("America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles")
_CUSTOM_FIELD_IDS = ("BcdmQEsNgz6AVpgLVUJ0", "K9wq2LmPz4TrX8sYv1Nc")
_PLANS = ("basic", "pro", "enterprise", "trial")


def _ascii(text: str, *, keep_case: bool = False) -> str:
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    letters = "".join(ch for ch in folded if ch.isalnum())
    return letters if keep_case else letters.lower()


_FIRST_ASCII = {name: _ascii(name) for name in _FIRST_NAMES}
_LAST_ASCII = {name: _ascii(name) for name in _LAST_NAMES}


#: Maps each byte to an id character; the slight bias of ``% 62`` does not matter for test data.
_ID_TABLE = bytes(ord(_ID_ALPHABET[i % len(_ID_ALPHABET)]) for i in range(256))


def new_contact_id(rng: random.Random) -> str:
    """A 20-character alphanumeric id like GHL's (e.g. ``nmFmQEsNgz6AVpgLVUJ0``)."""
    return rng.randbytes(_ID_LENGTH).translate(_ID_TABLE).decode()


class _Draw:
    """Fast draws from one seeded ``random.Random`` (``choice``/``randrange`` are slow at 100k)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.random = self.rng.random

    def pick(self, items: tuple[Any, ...]) -> Any:
        return items[int(self.random() * len(items))]

    def below(self, limit: int) -> int:
        return int(self.random() * limit)

    def contact_id(self) -> str:
        return new_contact_id(self.rng)

    def phone(self, area_codes: tuple[str, ...]) -> str:
        exchange = 200 + self.below(800)
        if exchange % 100 == 11 or exchange == 555:  # N11 codes and 555 are not assignable
            exchange += 1
        return f"+1{self.pick(area_codes)}{exchange:03d}{self.below(10_000):04d}"

    def unique_ms(self, low: int, high: int, taken: set[int]) -> int:
        stamp = low + self.below(high - low + 1)
        while stamp in taken:
            stamp += 1
        taken.add(stamp)
        return stamp


def _fields(draw: _Draw, index: int, emails: set[str], phones: set[str]) -> dict[str, Any]:
    random_ = draw.random
    pick = draw.pick
    first = pick(_FIRST_NAMES)
    last = pick(_LAST_NAMES)
    city, state, zip_prefix, area_codes = pick(_CITIES)
    fields: dict[str, Any] = {"firstName": first, "lastName": last}

    roll = random_()
    has_email = roll >= 0.03
    has_phone = roll < 0.03 or random_() >= 0.05
    if has_email:
        domain = pick(_EMAIL_DOMAINS)
        if random_() < 0.1:  # people type capitals; GHL keeps them as typed
            local = f"{_ascii(first, keep_case=True)}.{_ascii(last, keep_case=True)}"
            domain = domain.capitalize()
        else:
            local = f"{_FIRST_ASCII[first]}.{_LAST_ASCII[last]}"
        email = f"{local}@{domain}"
        if email.lower() in emails:
            email = f"{local}{index}@{domain}"
        emails.add(email.lower())
        fields["email"] = email
    if has_phone:
        phone = draw.phone(area_codes)
        while phone in phones:
            phone = draw.phone(area_codes)
        phones.add(phone)
        fields["phone"] = phone
    if random_() < 0.6:
        fields["companyName"] = pick(_COMPANIES)
    address_roll = random_()
    if address_roll < 0.75:
        fields["address1"] = f"{1 + draw.below(9998)} {pick(_STREETS)}"
        fields["city"] = city
        fields["state"] = state
        fields["postalCode"] = f"{zip_prefix}{draw.below(100):02d}"
        fields["country"] = "US"
    elif address_roll < 0.85:
        fields["city"] = city
        fields["state"] = state
    fields["dnd"] = random_() < 0.08
    fields["tags"] = list(pick(_TAG_CHOICES[pick(_TAG_COUNTS)]))
    fields["source"] = pick(_SOURCES)
    fields["type"] = "lead" if random_() < 0.85 else "customer"
    if random_() < 0.4:
        custom = [{"id": _CUSTOM_FIELD_IDS[0], "value": pick(_PLANS)}]
        if random_() < 0.3:
            custom.append({"id": _CUSTOM_FIELD_IDS[1], "value": str(index)})
        fields["customFields"] = custom
    if "companyName" in fields and random_() < 0.4:
        fields["website"] = f"https://www.{_ascii(fields['companyName'])}.example.com"
    if random_() < 0.5:
        fields["timezone"] = pick(_TIMEZONES)
    return fields


def generate_contacts(count: int, seed: int, *, location_id: str) -> list[ContactRecord]:
    """``count`` contacts for ``location_id``, identical for identical ``(count, seed)``.

    Ids, emails and phones are unique; ``dateAdded`` and ``dateUpdated`` are distinct past
    instants in 2024 and 2025 with ``dateUpdated >= dateAdded``.
    """
    if count < 0:
        raise ValueError("count must not be negative")
    draw = _Draw(seed)
    ids: set[str] = set()
    emails: set[str] = set()
    phones: set[str] = set()
    added_taken: set[int] = set()
    updated_taken: set[int] = set()
    records: list[ContactRecord] = []
    for index in range(count):
        new_id = draw.contact_id()
        while new_id in ids:
            new_id = draw.contact_id()
        ids.add(new_id)
        fields = _fields(draw, index, emails, phones)
        added = draw.unique_ms(_START_MS, _END_MS - 86_400_000, added_taken)
        if draw.random() < 0.35:  # never edited since creation
            updated = added
            while updated in updated_taken:
                updated += 1
            updated_taken.add(updated)
        else:
            updated = draw.unique_ms(added, _END_MS, updated_taken)
        records.append(
            ContactRecord(
                contact_id=new_id,
                location_id=location_id,
                added_ms=added,
                updated_ms=updated,
                fields=fields,
            )
        )
    return records
