"""Hostile and random input: the receiver answers 2xx/4xx, never 500, and the inbox never stalls."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import httpx
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from ghlsync_cli.errors import InputError
from ghlsync_cli.sandbox import sign_body
from ghlsync_cli.server import WEBHOOK_PATHS
from ghlsync_cli.store import Store
from ghlsync_cli.sync.inbox import process_pending, receive
from ghlsync_cli.timeutil import utc_now
from ghlsync_cli.webhooks import check_timestamp, parse_event
from tests.helpers import Cli
from tests.webhooks.conftest import StartReceiver
from tests.webhooks.support import LOCATION, iso_now

EVENT_TYPES = [
    "ContactCreate",
    "ContactUpdate",
    "ContactDndUpdate",
    "ContactTagUpdate",
    "ContactDelete",
    "INSTALL",
    "UNINSTALL",
    "AppInstall",
    "AppUninstall",
    "OpportunityCreate",
    "",
]
CONTACT_KEYS = [
    "id",
    "firstName",
    "lastName",
    "name",
    "email",
    "phone",
    "companyName",
    "address1",
    "city",
    "state",
    "postalCode",
    "country",
    "tags",
    "dnd",
    "source",
    "dateAdded",
    "dateUpdated",
    "timestamp",
    "webhookId",
    "locationId",
    "customFields",
]
# Values that have tripped parsers before: odd times, numbers, phones and emails.
TRICKY = [
    "now",
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-01:00",
    "2024-02-30T00:00:00Z",
    "not a date",
    10**20,
    -(10**20),
    2**63,
    1.5e308,
    "+1 (415) 555-0123",
    "0000000",
    "+",
    "a@b",
    "@",
    "\u0000",
    "\ud7ff",
]

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and infinities too: Python's json writes and reads them
    | st.text(max_size=24)
    | st.sampled_from(TRICKY)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _resolve(value: Any) -> Any:
    return iso_now() if value == "now" else value


@st.composite
def event_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """Bodies shaped like GHL events, for the connected location or another, with random keys."""
    body: dict[str, Any] = {
        "type": draw(st.sampled_from(EVENT_TYPES)),
        "locationId": draw(st.sampled_from([LOCATION, "someOtherLocation01", ""])),
        "id": draw(st.sampled_from(["fuzzContact000000001", "fuzzContact000000002"])),
    }
    # The timestamp is read before anything is stored, so it gets its own share of odd values.
    stamp = draw(st.sampled_from(["absent", "now", "tricky", "random"]))
    if stamp == "now":
        body["timestamp"] = iso_now()
    elif stamp == "tricky":
        body["timestamp"] = _resolve(draw(st.sampled_from(TRICKY)))
    elif stamp == "random":
        body["timestamp"] = draw(json_values)
    values = st.sampled_from(TRICKY) | json_values
    extra = draw(st.dictionaries(st.sampled_from(CONTACT_KEYS), values, max_size=6))
    body.update({k: _resolve(v) for k, v in extra.items()})
    return body


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


raw_bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(_dumps),
    event_bodies().map(_dumps),
    st.tuples(event_bodies().map(_dumps), st.integers(0, 400)).map(lambda t: t[0][: t[1]]),
)
header_values = st.one_of(
    # h11 (the client) refuses values with surrounding whitespace before anything is sent.
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40).map(str.strip),
    st.binary(max_size=80).map(lambda b: base64.b64encode(b).decode()),
)
headers = st.dictionaries(
    st.sampled_from(
        ["X-GHL-Signature", "X-WH-Signature", "Content-Type", "X-Request-Id", "User-Agent"]
    )
    | st.from_regex(r"X-[A-Za-z0-9-]{1,12}", fullmatch=True),
    header_values,
    max_size=4,
)


def test_no_request_gets_a_500(
    start_receiver: StartReceiver, connected: Cli, tmp_path: Path
) -> None:
    """Random bytes, JSON and headers, signed or not, to a verifying and an open receiver."""
    unverified = Cli(db=tmp_path / "unverified.db", api_base=connected.api_base)
    unverified.connect()
    targets = {
        "verified": start_receiver(),
        # serve --insecure-no-verify: every body reaches the parser and the inbox.
        "unverified": start_receiver(verifier=None, db=unverified.db),
    }
    # A fresh connection per request, so one failure cannot spill into the next request.
    with httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as http:

        @settings(
            max_examples=150,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            # Replaying and explaining a failure costs a round trip per step; shrinking is enough.
            phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
        )
        @given(
            raw=raw_bodies,
            sent_headers=headers,
            sign=st.booleans(),
            target=st.sampled_from(sorted(targets)),
            path=st.sampled_from(WEBHOOK_PATHS),
        )
        def deliver(
            raw: bytes, sent_headers: dict[str, str], sign: bool, target: str, path: str
        ) -> None:
            if sign:
                sent_headers = {**sent_headers, "X-GHL-Signature": sign_body(raw)}
            response = http.post(targets[target].url + path, content=raw, headers=sent_headers)
            assert response.status_code in {200, 400, 401, 413, 429}, (
                response.status_code,
                response.text,
            )

        deliver()

    for receiver in targets.values():
        assert receiver.http.get("/healthz").status_code == 200


@settings(max_examples=100, deadline=None)
@given(bodies=st.lists(event_bodies().map(_dumps), min_size=1, max_size=5))
def test_every_stored_event_is_applied_or_skipped_never_stuck(bodies: list[bytes]) -> None:
    """What ``serve`` stored, its worker applies or skips: an exception would stall the inbox."""
    store = Store.memory()
    try:
        with store.write():
            store.save_location(LOCATION, token_kind="env", now=utc_now())
        for raw in bodies:
            try:
                event = parse_event(raw)
                check_timestamp(event)
            except InputError:
                continue  # serve answers 400 and stores nothing
            receive(store, event)
        process_pending(store)
        assert store.query("SELECT id, outcome FROM inbox WHERE status = 'pending'") == []
    finally:
        store.close()
