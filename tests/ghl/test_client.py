"""GHLClient against FakeGHL: calls, headers, status→error mapping, retries and bad bodies."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
import stamina

from ghlsync_cli import __version__
from ghlsync_cli.errors import (
    ApiError,
    AuthError,
    ConfigError,
    GhlsyncError,
    MalformedResponseError,
    NotFoundError,
    UnavailableError,
    ValidationError,
)
from ghlsync_cli.ghl.client import API_VERSION, GHLClient, RetryPolicy, build_http_client

from .conftest import MakeClient
from .fakes import LOCATION_ID, TOKEN, FakeClock, FakeGHL, Fault, error


def sent_json(request: httpx.Request) -> object:
    return json.loads(request.content)


# -- calls and headers ----------------------------------------------------------------------


def test_every_request_carries_auth_version_and_user_agent(
    client: GHLClient, fake: FakeGHL
) -> None:
    contact = fake.add_contact(firstName="Ada")

    assert client.get_contact(contact["id"]).firstName == "Ada"

    headers = fake.requests[-1].headers
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert headers["Version"] == API_VERSION == "2021-07-28"
    assert headers["User-Agent"] == f"ghlsync/{__version__}"
    assert headers["Accept"] == "application/json"


def test_build_http_client_sets_base_url_and_explicit_timeouts() -> None:
    http = build_http_client("https://ghl.test", auth=None, timeout=12.0)
    with http:
        assert http.base_url == "https://ghl.test"
        assert http.timeout == httpx.Timeout(12.0, connect=10.0)
        assert http.headers["Version"] == API_VERSION


def test_contact_crud_round_trip(client: GHLClient, fake: FakeGHL) -> None:
    created = client.create_contact({"firstName": "Ada", "email": "ada@example.com"})
    assert sent_json(fake.requests[-1]) == {
        "firstName": "Ada",
        "email": "ada@example.com",
        "locationId": LOCATION_ID,
    }
    assert client.get_contact(created.id).email == "ada@example.com"

    updated = client.update_contact(created.id, {"lastName": "Lovelace"})
    assert updated is not None
    assert updated.lastName == "Lovelace"

    assert client.add_tags(created.id, ["vip", "lead"]) == ["lead", "vip"]
    assert client.remove_tags(created.id, ["lead"]) == ["vip"]
    removal = fake.requests[-1]
    assert (removal.method, removal.url.path) == ("DELETE", f"/contacts/{created.id}/tags")
    assert sent_json(removal) == {"tags": ["lead"]}

    client.delete_contact(created.id)
    assert created.id not in fake.contacts
    assert client.request_count == 6


def test_upsert_adds_location_and_reports_new(client: GHLClient, fake: FakeGHL) -> None:
    first = client.upsert_contact({"email": "bo@example.com", "firstName": "Bo"})
    again = client.upsert_contact({"email": "bo@example.com", "lastName": "Diddley"})

    assert sent_json(fake.requests[0]) == {
        "email": "bo@example.com",
        "firstName": "Bo",
        "locationId": LOCATION_ID,
    }
    assert (first.new, again.new) == (True, False)
    assert again.contact.id == first.contact.id
    assert again.contact.lastName == "Diddley"


def test_verify_returns_total_with_a_one_contact_page(client: GHLClient, fake: FakeGHL) -> None:
    for n in range(3):
        fake.add_contact(firstName=f"P{n}")

    assert client.verify() == 3
    assert sent_json(fake.requests[-1])["pageLimit"] == 1  # type: ignore[index]


def test_search_body_has_sort_cursor_filters_and_query(client: GHLClient, fake: FakeGHL) -> None:
    client.search_contacts(
        page_limit=50,
        search_after=[1700000000000, "abc"],
        updated_since="2025-01-01T00:00:00.000Z",
        extra_filters=[{"field": "tags", "operator": "contains", "value": "vip"}],
        query="ada",
    )

    assert sent_json(fake.requests[-1]) == {
        "locationId": LOCATION_ID,
        "pageLimit": 50,
        "sort": [{"field": "dateUpdated", "direction": "asc"}],
        "searchAfter": [1700000000000, "abc"],
        "filters": [
            {
                "field": "dateUpdated",
                "operator": "range",
                "value": {"gte": "2025-01-01T00:00:00.000Z"},
            },
            {"field": "tags", "operator": "contains", "value": "vip"},
        ],
        "query": "ada",
    }


def test_search_body_is_minimal_by_default(client: GHLClient, fake: FakeGHL) -> None:
    client.search_contacts()

    assert sent_json(fake.requests[-1]) == {
        "locationId": LOCATION_ID,
        "pageLimit": 500,
        "sort": [{"field": "dateUpdated", "direction": "asc"}],
    }


def test_contact_ids_are_escaped_into_one_path_segment(client: GHLClient, fake: FakeGHL) -> None:
    with pytest.raises(NotFoundError):
        client.get_contact("../search")

    assert fake.requests[-1].url.raw_path == b"/contacts/..%2Fsearch"


def test_an_unusable_api_base_is_a_config_error() -> None:
    client = GHLClient(
        build_http_client("ftp://ghl.test", auth=None),
        location_id=LOCATION_ID,
        sleep=FakeClock().sleep,
    )
    with client, pytest.raises(ConfigError, match="unsupported protocol") as info:
        client.get_contact("x")

    assert "--api-base" in (info.value.hint or "")


# -- status → error -------------------------------------------------------------------------


def test_401_is_an_auth_error_and_not_retried(make_client: MakeClient, fake: FakeGHL) -> None:
    client = make_client(token="wrong-token-value")

    with pytest.raises(AuthError, match=r"\(401 on GET /contacts/c1\): Invalid JWT") as info:
        client.get_contact("c1")

    assert info.value.exit_code == 77
    assert len(fake.requests) == 1


def test_403_is_a_config_error_with_ghl_message_and_a_scope_hint(
    client: GHLClient, fake: FakeGHL
) -> None:
    fake.fail_next(error(403, "The token does not have access to this location."))

    with pytest.raises(ConfigError, match="does not have access to this location") as info:
        client.verify()

    assert info.value.exit_code == 78
    assert info.value.hint is not None
    assert LOCATION_ID in info.value.hint
    assert "scopes" in info.value.hint


def test_404_is_not_found(client: GHLClient, fake: FakeGHL) -> None:
    fake.fail_next(error(404, "Cannot GET /contacts/x", error="Not Found"))

    with pytest.raises(NotFoundError) as info:
        client.get_contact("x")

    assert (info.value.status, info.value.method, info.value.path) == (404, "GET", "/contacts/x")


def test_400_contact_not_found_is_not_found(client: GHLClient) -> None:
    with pytest.raises(NotFoundError, match="Contact not found") as info:
        client.update_contact("missing", {"firstName": "X"})

    assert info.value.status == 400
    assert info.value.details == ["Contact not found"]


def test_400_duplicate_is_a_validation_error_that_keeps_the_body(
    client: GHLClient, fake: FakeGHL
) -> None:
    existing = fake.add_contact(email="dup@example.com", firstName="Dup")

    with pytest.raises(ValidationError, match="does not allow duplicated contacts") as info:
        client.create_contact({"email": "dup@example.com"})

    assert info.value.status == 400
    assert info.value.details == ["This location does not allow duplicated contacts."]
    assert isinstance(info.value.body, dict)
    assert info.value.body["meta"]["contactId"] == existing["id"]


def test_422_is_a_validation_error_with_every_message(client: GHLClient, fake: FakeGHL) -> None:
    messages = ["email must be an email", "phone must be a valid phone number"]
    fake.fail_next(error(422, messages, error="Unprocessable Entity"))

    with pytest.raises(ValidationError) as info:
        client.create_contact({"email": "nope"})

    assert info.value.details == messages
    assert info.value.is_permanent
    assert len(fake.requests) == 1


@pytest.mark.parametrize("status", [409, 412])
def test_conflicts_are_api_errors(client: GHLClient, fake: FakeGHL, status: int) -> None:
    fake.fail_next(error(status, "Conflict"))

    with pytest.raises(ApiError) as info:
        client.update_contact("c1", {"firstName": "X"})

    assert type(info.value) is ApiError
    assert info.value.status == status
    assert len(fake.requests) == 1


def test_request_id_is_kept_from_the_response(client: GHLClient, fake: FakeGHL) -> None:
    response = error(404, "Not found")
    response.headers["X-Request-Id"] = "req-42"
    fake.fail_next(response)

    with pytest.raises(NotFoundError) as info:
        client.get_contact("x")

    assert info.value.request_id == "req-42"


# -- retries --------------------------------------------------------------------------------


def test_503_is_retried_with_exponential_waits_then_succeeds(
    client: GHLClient, fake: FakeGHL, clock: FakeClock
) -> None:
    contact = fake.add_contact(firstName="Ada")
    fake.fail_next(error(503, "Service Unavailable"), times=2)

    assert client.get_contact(contact["id"]).id == contact["id"]

    assert clock.sleeps == [0.5, 1.0]
    assert client.request_count == 3


def test_gives_up_after_every_attempt(client: GHLClient, fake: FakeGHL, clock: FakeClock) -> None:
    fake.fail_next(error(503, "Service Unavailable"), times=10)

    with pytest.raises(UnavailableError, match="gave up after 6 attempts") as info:
        client.get_contact("c1")

    assert "503" in info.value.message
    assert info.value.status == 503
    assert info.value.exit_code == 69
    assert clock.sleeps == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert len(fake.requests) == 6


def test_waits_are_capped_by_wait_max(
    make_client: MakeClient, fake: FakeGHL, clock: FakeClock
) -> None:
    client = make_client(retry=RetryPolicy(attempts=7, wait_max=3.0, wait_jitter=0.0))
    fake.fail_next(error(502, "Bad Gateway"), times=7)

    with pytest.raises(UnavailableError, match="gave up after 7 attempts"):
        client.get_contact("c1")

    assert clock.sleeps == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_waits_are_jittered_exponential(
    make_client: MakeClient, fake: FakeGHL, clock: FakeClock
) -> None:
    client = make_client(retry=RetryPolicy())
    fake.fail_next(error(500, "Internal Server Error"), times=6)

    with pytest.raises(UnavailableError):
        client.get_contact("c1")

    assert len(clock.sleeps) == 5
    for n, wait in enumerate(clock.sleeps):
        assert 0.5 * 2**n <= wait <= 0.5 * 2**n + 1.0


def test_gives_up_when_the_next_wait_would_pass_the_timeout(
    make_client: MakeClient, fake: FakeGHL, clock: FakeClock
) -> None:
    client = make_client(retry=RetryPolicy(timeout=5.0, wait_jitter=0.0))
    fake.fail_next(error(503, "Service Unavailable"), times=10)

    with pytest.raises(UnavailableError, match="would exceed 5 s; gave up after 4 attempts"):
        client.get_contact("c1")

    assert clock.sleeps == [0.5, 1.0, 2.0]


def test_429_waits_as_long_as_retry_after_says(
    client: GHLClient, fake: FakeGHL, clock: FakeClock
) -> None:
    contact = fake.add_contact(firstName="Ada")
    limited = error(429, "Too many requests")
    limited.headers["Retry-After"] = "7"
    fake.fail_next(limited)

    assert client.get_contact(contact["id"]).id == contact["id"]

    assert clock.sleeps == [7.0]


def test_429_understands_an_http_date_retry_after(
    client: GHLClient, fake: FakeGHL, clock: FakeClock
) -> None:
    limited = error(429, "Too many requests")
    limited.headers["Retry-After"] = format_datetime(
        datetime.now(UTC) + timedelta(seconds=30), usegmt=True
    )
    fake.fail_next(limited)

    client.search_contacts()

    assert len(clock.sleeps) == 1
    assert 27.0 <= clock.sleeps[0] <= 30.0


def test_429_gives_up_at_once_when_retry_after_is_beyond_the_budget(
    client: GHLClient, fake: FakeGHL, clock: FakeClock
) -> None:
    limited = error(429, "Too many requests")
    limited.headers["Retry-After"] = "3600"
    fake.fail_next(limited)

    with pytest.raises(UnavailableError, match=r"429.*waiting 3600 s more") as info:
        client.search_contacts()

    assert info.value.status == 429
    assert clock.sleeps == []


def test_429_without_retry_after_backs_off(
    client: GHLClient, fake: FakeGHL, clock: FakeClock
) -> None:
    fake.fail_next(error(429, "Too many requests"), times=2)

    client.search_contacts()

    assert clock.sleeps == [0.5, 1.0]


@pytest.mark.parametrize(
    "exc_type", [httpx.ConnectError, httpx.ReadTimeout, httpx.RemoteProtocolError]
)
def test_network_errors_are_retried_for_idempotent_calls(
    client: GHLClient, fake: FakeGHL, clock: FakeClock, exc_type: type[httpx.TransportError]
) -> None:
    contact = fake.add_contact(firstName="Ada")
    fake.raise_next(exc_type, times=2)

    assert client.update_contact(contact["id"], {"lastName": "L"}) is not None

    assert clock.sleeps == [0.5, 1.0]


def test_network_errors_give_up_with_what_happened(client: GHLClient, fake: FakeGHL) -> None:
    fake.raise_next(httpx.ReadTimeout, times=6)

    with pytest.raises(UnavailableError, match=r"ReadTimeout.*gave up after 6 attempts"):
        client.delete_contact("c1")


def test_create_is_not_retried_after_a_503(
    client: GHLClient, fake: FakeGHL, clock: FakeClock
) -> None:
    fake.fail_next(error(503, "Service Unavailable"))

    with pytest.raises(UnavailableError, match="not retried") as info:
        client.create_contact({"firstName": "Once"})

    assert info.value.status == 503
    assert len(fake.requests) == 1
    assert clock.sleeps == []


def test_create_is_not_retried_after_a_read_timeout(client: GHLClient, fake: FakeGHL) -> None:
    fake.raise_next(httpx.ReadTimeout)

    with pytest.raises(UnavailableError, match=r"ReadTimeout.*not retried"):
        client.create_contact({"firstName": "Once"})

    assert len(fake.requests) == 1


def test_create_is_retried_after_a_429(client: GHLClient, fake: FakeGHL, clock: FakeClock) -> None:
    limited = error(429, "Too many requests")
    limited.headers["Retry-After"] = "2"
    fake.fail_next(limited)

    created = client.create_contact({"firstName": "Once"})

    assert list(fake.contacts) == [created.id]
    assert clock.sleeps == [2.0]


@pytest.mark.parametrize("exc_type", [httpx.ConnectError, httpx.ConnectTimeout])
def test_create_is_retried_when_no_connection_was_made(
    client: GHLClient, fake: FakeGHL, exc_type: type[httpx.TransportError]
) -> None:
    fake.raise_next(exc_type)

    created = client.create_contact({"firstName": "Once"})

    assert list(fake.contacts) == [created.id]
    assert client.request_count == 1  # the failed connection sent nothing


@pytest.mark.parametrize("key", ["email", "phone"])
def test_upsert_with_a_dedupe_key_is_retried_after_a_503(
    client: GHLClient, fake: FakeGHL, key: str
) -> None:
    fake.fail_next(error(503, "Service Unavailable"))

    result = client.upsert_contact({key: "ada@example.com" if key == "email" else "+15550100"})

    assert result.new
    assert len(fake.contacts) == 1
    assert len(fake.requests) == 2


@pytest.mark.parametrize("fields", [{"firstName": "Ada"}, {"firstName": "Ada", "email": " "}])
def test_upsert_without_a_dedupe_key_is_treated_like_a_create(
    client: GHLClient, fake: FakeGHL, fields: dict[str, object]
) -> None:
    fake.fail_next(error(503, "Service Unavailable"))

    with pytest.raises(UnavailableError, match="not retried"):
        client.upsert_contact(fields)

    assert len(fake.requests) == 1


def test_retrying_can_be_switched_off_with_stamina(client: GHLClient, fake: FakeGHL) -> None:
    fake.fail_next(error(503, "Service Unavailable"), times=3)
    stamina.set_active(False)
    try:
        with pytest.raises(UnavailableError, match="gave up after 1 attempt\\."):
            client.get_contact("c1")
    finally:
        stamina.set_active(True)
    assert len(fake.requests) == 1


# -- bodies that are not the documented shape ------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        b"<html>Bad gateway</html>",
        b'{"contact": {"id": "c1", "firstName": "Tr',
        b"",
        b'{"contact": {"firstName": "No id"}}',
        b'{"contact": []}',
        b"[]",
    ],
    ids=["html", "truncated", "empty", "no-id", "wrong-type", "array"],
)
def test_a_malformed_2xx_body_is_reported_not_retried(
    client: GHLClient, fake: FakeGHL, content: bytes
) -> None:
    fake.fail_next(httpx.Response(200, content=content, headers={"X-Request-Id": "r9"}))

    with pytest.raises(MalformedResponseError, match="not a valid ContactEnvelope") as info:
        client.get_contact("c1")

    assert (info.value.status, info.value.method, info.value.path) == (200, "GET", "/contacts/c1")
    assert info.value.request_id == "r9"
    assert len(fake.requests) == 1


def test_a_search_page_of_the_wrong_shape_is_malformed(client: GHLClient, fake: FakeGHL) -> None:
    fake.fail_next(httpx.Response(200, json={"contacts": "none", "total": 0}))

    with pytest.raises(MalformedResponseError, match="contacts"):
        client.search_contacts()


def test_an_undecodable_body_is_malformed(client: GHLClient, fake: FakeGHL) -> None:
    fake.fail_next(
        lambda request: httpx.Response(
            200, headers={"Content-Encoding": "gzip"}, stream=httpx.ByteStream(b"not gzip")
        )
    )

    with pytest.raises(MalformedResponseError, match="could not be decoded"):
        client.get_contact("c1")


# -- secrets --------------------------------------------------------------------------------


def echo_authorization(status: int) -> Fault:
    def answer(request: httpx.Request) -> httpx.Response:
        return error(status, f"bad credentials: {request.headers['Authorization']}")

    return answer


@pytest.mark.parametrize(
    "fault",
    [
        echo_authorization(401),
        echo_authorization(403),
        echo_authorization(400),
        echo_authorization(422),
        echo_authorization(503),
        httpx.Response(200, content=TOKEN.encode()),
    ],
    ids=["401", "403", "400", "422", "503", "malformed"],
)
def test_no_exception_carries_the_token(
    client: GHLClient,
    fake: FakeGHL,
    fault: Fault | httpx.Response,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake.fail_next(fault, times=6)
    caplog.set_level(logging.DEBUG)

    with pytest.raises(GhlsyncError) as info:
        client.get_contact("c1")

    exc = info.value
    seen = [str(exc), repr(exc), exc.hint or "", caplog.text]
    if isinstance(exc, ApiError):
        seen += [*exc.details, json.dumps(exc.body)]
    assert all(TOKEN not in text for text in seen)
