"""The one way ghlsync talks to GHL: typed contact calls over a single ``_request()`` chokepoint.

Why one chokepoint: every call gets the same pacing, retries, status→error mapping and response
validation, so callers never see a raw dict or an httpx exception, and a rule such as "never
repeat a create that may have reached GHL" lives in exactly one place.

Retries (``RetryPolicy``, driven by ``stamina.retry_context``): 429, 408, 5xx and network errors
are retried with jittered exponential backoff, or after ``Retry-After`` when GHL sends one, and
then reported as ``UnavailableError``. A call is only repeated when repeating cannot do harm:

- reads, updates, deletes, tag changes and searches are idempotent: retried on every transient
  failure;
- ``POST /contacts/`` is not: it is retried only when GHL surely did not act on it (429, or no
  connection was made), because a repeat after a 5xx or a read timeout could create it twice;
- ``POST /contacts/upsert`` dedupes on email and phone, so it is idempotent when it carries one
  of them, and otherwise is treated like a create.

Every wait (backoff, ``Retry-After``, pacing) goes through the injected ``sleep``; stamina only
counts attempts (it is told to wait 0 s), so the waits stay in one place and tests can assert them.

Terminology:
    attempt   one HTTP exchange; a call makes up to ``RetryPolicy.attempts`` of them
    replay    whether a failed attempt may be repeated (``_Replay``)
"""

from __future__ import annotations

import email.utils
import enum
import logging
import random
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Self, TypeVar
from urllib.parse import quote

import httpx
import pydantic
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
from ghlsync_cli.ghl.models import (
    ContactEnvelope,
    DeleteResponse,
    ErrorBody,
    GhlContact,
    SearchResponse,
    TagsResponse,
    UpdateResponse,
    UpsertResponse,
)
from ghlsync_cli.ghl.pacing import RatePacer

DEFAULT_API_BASE = "https://services.leadconnectorhq.com"
API_VERSION = "2021-07-28"
CONNECT_TIMEOUT = 10.0

_HEADERS = {
    "User-Agent": f"ghlsync/{__version__}",
    "Accept": "application/json",
    "Version": API_VERSION,
}

SearchAfter = list[int | float | str]
ModelT = TypeVar("ModelT", bound=pydantic.BaseModel)

log = logging.getLogger(__name__)

_REQUEST_ID_HEADERS = ("x-request-id", "traceid", "x-trace-id")
# Failures that happen before a single byte of the request reaches GHL: always safe to repeat.
_UNSENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_SEARCH_PATH = "/contacts/search"


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently one call is retried."""

    attempts: int = 6  # tries per call, the first included
    wait_initial: float = 0.5  # seconds before the first retry, doubling after each
    wait_max: float = 30.0  # cap on one wait
    timeout: float = 300.0  # seconds across all tries of one call
    wait_jitter: float = 1.0  # up to this much random extra per wait, as stamina adds

    def backoff(self, retry_number: int) -> float:
        """The wait before retry ``retry_number`` (1-based), by stamina's jittered formula."""
        exponential = self.wait_initial * 2.0 ** min(max(retry_number - 1, 0), 60)
        jitter = random.uniform(0.0, self.wait_jitter)
        return float(min(self.wait_max, exponential + jitter))


class _Replay(enum.Enum):
    """When a failed attempt may be repeated."""

    IDEMPOTENT = "idempotent"  # after any transient failure
    UNSENT = "unsent"  # only when GHL surely did not act on it (429, no connection)


class _TransientError(Exception):
    """An attempt failed in a way that another attempt may fix; never leaves this module."""

    def __init__(
        self,
        what: str,
        *,
        status: int | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(what)
        self.what = what
        self.status = status
        self.request_id = request_id
        self.retry_after = retry_after


def build_http_client(
    api_base: str,
    *,
    auth: httpx.Auth | None,
    timeout: float = 30.0,
    transport: httpx.BaseTransport | None = None,
) -> httpx.Client:
    """An ``httpx.Client`` for GHL: base URL, explicit timeouts and the headers GHL requires.

    TCP_NODELAY: a request's headers and body go out as separate writes; with Nagle's algorithm
    the body waits for the peer's delayed ACK (tens of milliseconds per request).
    """
    if transport is None:
        transport = httpx.HTTPTransport(
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
        )
    return httpx.Client(
        base_url=api_base,
        auth=auth,
        timeout=httpx.Timeout(timeout, connect=CONNECT_TIMEOUT),
        headers=_HEADERS,
        transport=transport,
        http2=False,
        follow_redirects=False,
    )


class GHLClient:
    """The GHL contacts API for one location: paced, retried, and validated into ``ghl.models``."""

    def __init__(
        self,
        http: httpx.Client,
        *,
        location_id: str,
        retry: RetryPolicy = RetryPolicy(),
        pacer: RatePacer | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.location_id = location_id
        # Requests that left this machine, retries included (a refused connection sends none).
        self.request_count = 0
        self.retry = retry
        self.pacer = pacer if pacer is not None else RatePacer(clock=clock, sleep=sleep)
        self._http = http
        self._sleep = sleep
        self._clock = clock

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the underlying HTTP connections."""
        self._http.close()

    # -- contacts ---------------------------------------------------------------------------------

    def verify(self) -> int:
        """Prove the token can read this location's contacts; return how many it has."""
        return self.search_contacts(page_limit=1).total

    def search_contacts(
        self,
        *,
        page_limit: int = 500,
        search_after: SearchAfter | None = None,
        updated_since: str | None = None,
        sort_field: str = "dateUpdated",
        direction: str = "asc",
        extra_filters: list[dict[str, object]] | None = None,
        query: str | None = None,
    ) -> SearchResponse:
        """One page of ``POST /contacts/search``."""
        body: dict[str, object] = {
            "locationId": self.location_id,
            "pageLimit": page_limit,
            "sort": [{"field": sort_field, "direction": direction}],
        }
        if search_after is not None:
            body["searchAfter"] = list(search_after)
        filters: list[dict[str, object]] = []
        if updated_since is not None:
            filters.append(
                {"field": "dateUpdated", "operator": "range", "value": {"gte": updated_since}}
            )
        filters.extend(extra_filters or [])
        if filters:
            body["filters"] = filters
        if query is not None:
            body["query"] = query
        return self._request("POST", _SEARCH_PATH, SearchResponse, json=body)

    def iter_contact_pages(
        self,
        *,
        page_limit: int = 500,
        search_after: SearchAfter | None = None,
        updated_since: str | None = None,
    ) -> Iterator[SearchResponse]:
        """Every page of contacts by ``dateUpdated`` ascending, following ``searchAfter``."""
        cursor = list(search_after) if search_after is not None else None
        seen: set[tuple[int | float | str, ...]] = {tuple(cursor)} if cursor else set()
        while True:
            page = self.search_contacts(
                page_limit=page_limit, search_after=cursor, updated_since=updated_since
            )
            if len(page.contacts) < page_limit:
                yield page
                return
            next_cursor = page.contacts[-1].searchAfter
            # A repeated or missing cursor would fetch the same page forever.
            if not next_cursor or tuple(next_cursor) in seen:
                raise MalformedResponseError(
                    f"GHL's pagination cursor did not advance on POST {_SEARCH_PATH} "
                    f"(searchAfter {next_cursor!r} after {cursor!r}); stopped instead of looping.",
                    status=200,
                    method="POST",
                    path=_SEARCH_PATH,
                )
            seen.add(tuple(next_cursor))
            yield page
            cursor = next_cursor

    def get_contact(self, ghl_id: str) -> GhlContact:
        """``GET /contacts/{id}``."""
        return self._request("GET", _contact_path(ghl_id), ContactEnvelope).contact

    def create_contact(self, fields: dict[str, object]) -> GhlContact:
        """``POST /contacts/`` in this location; never repeated once GHL may have acted on it."""
        body = {**fields, "locationId": self.location_id}
        envelope = self._request(
            "POST", "/contacts/", ContactEnvelope, json=body, replay=_Replay.UNSENT
        )
        return envelope.contact

    def upsert_contact(self, fields: dict[str, object]) -> UpsertResponse:
        """``POST /contacts/upsert`` in this location; retried freely only if GHL can dedupe it."""
        body = {**fields, "locationId": self.location_id}
        replay = _Replay.IDEMPOTENT if _has_dedupe_key(fields) else _Replay.UNSENT
        return self._request("POST", "/contacts/upsert", UpsertResponse, json=body, replay=replay)

    def update_contact(self, ghl_id: str, fields: dict[str, object]) -> GhlContact | None:
        """``PUT /contacts/{id}``; returns the updated contact when GHL sends it back."""
        return self._request("PUT", _contact_path(ghl_id), UpdateResponse, json=fields).contact

    def delete_contact(self, ghl_id: str) -> None:
        """``DELETE /contacts/{id}``."""
        self._request("DELETE", _contact_path(ghl_id), DeleteResponse)

    def add_tags(self, ghl_id: str, tags: list[str]) -> list[str]:
        """``POST /contacts/{id}/tags``; returns the tags GHL reports."""
        path = _contact_path(ghl_id, "/tags")
        return self._request("POST", path, TagsResponse, json={"tags": tags}).tags

    def remove_tags(self, ghl_id: str, tags: list[str]) -> list[str]:
        """``DELETE /contacts/{id}/tags`` with a JSON body; returns the tags GHL reports."""
        path = _contact_path(ghl_id, "/tags")
        return self._request("DELETE", path, TagsResponse, json={"tags": tags}).tags

    # -- the chokepoint ---------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        model: type[ModelT],
        *,
        json: dict[str, object] | None = None,
        replay: _Replay = _Replay.IDEMPOTENT,
    ) -> ModelT:
        """Send one call (paced, retried as ``replay`` allows); validate its body into ``model``."""
        response = self._send_with_retries(method, path, json, replay)
        return _parse(response, model, method, path)

    def _send_with_retries(
        self, method: str, path: str, json: dict[str, object] | None, replay: _Replay
    ) -> httpx.Response:
        policy = self.retry
        started = self._clock()
        made = 0
        next_wait = 0.0
        reason = ""

        def should_retry(exc: Exception) -> bool:
            nonlocal next_wait, reason
            if not isinstance(exc, _TransientError):
                return False
            wait = exc.retry_after if exc.retry_after is not None else policy.backoff(made)
            if self._clock() - started + wait > policy.timeout:
                exc.what += f", and waiting {wait:g} s more would exceed {policy.timeout:g} s"
                return False
            next_wait, reason = wait, exc.what
            return True

        try:
            # stamina decides whether and how often to retry; the waiting happens below, via sleep.
            for attempt in stamina.retry_context(
                on=should_retry,
                attempts=policy.attempts,
                timeout=None,
                wait_initial=0.0,
                wait_max=0.0,
                wait_jitter=0.0,
            ):
                with attempt:
                    if made:
                        log.info(
                            "Retrying %s %s in %.1f s (attempt %d of %d) after: %s",
                            method,
                            path,
                            next_wait,
                            made + 1,
                            policy.attempts,
                            reason,
                        )
                        self._sleep(next_wait)
                    made += 1
                    return self._send_once(method, path, json, replay)
        except _TransientError as exc:
            attempts = f"{made} attempt" + ("" if made == 1 else "s")
            raise UnavailableError(
                f"{method} {path} failed: {exc.what}; gave up after {attempts}.",
                status=exc.status,
                method=method,
                path=path,
                request_id=exc.request_id,
            ) from exc.__cause__
        raise AssertionError("stamina ended without an attempt")  # pragma: no cover

    def _send_once(
        self, method: str, path: str, json: dict[str, object] | None, replay: _Replay
    ) -> httpx.Response:
        self.pacer.acquire()
        try:
            response = self._http.request(method, path, json=json, headers=_HEADERS)
        except httpx.UnsupportedProtocol as exc:
            raise ConfigError(
                f"Cannot send requests to the GHL API base URL: {exc}",
                hint="Set --api-base (GHLSYNC_API_BASE) to an http:// or https:// URL.",
            ) from exc
        except httpx.TransportError as exc:
            is_unsent = isinstance(exc, _UNSENT_ERRORS)
            if not is_unsent:
                self.request_count += 1
                self.pacer.record()
            what = f"network error ({type(exc).__name__}: {str(exc) or 'no details'})"
            if is_unsent or replay is _Replay.IDEMPOTENT:
                raise _TransientError(what) from exc
            raise UnavailableError(
                f"{method} {path} failed: {what}; not retried, since GHL may have acted on it.",
                method=method,
                path=path,
            ) from exc
        except httpx.DecodingError as exc:
            self.request_count += 1
            self.pacer.record()
            raise MalformedResponseError(
                f"GHL's answer to {method} {path} could not be decoded ({exc}).",
                method=method,
                path=path,
            ) from exc
        self.request_count += 1
        self.pacer.record(response.headers)
        status = response.status_code
        if status in (408, 429) or status >= 500:
            what = f"GHL answered {status} {response.reason_phrase}".rstrip()
            request_id = _request_id(response)
            if status == 429 or replay is _Replay.IDEMPOTENT:
                raise _TransientError(
                    what, status=status, request_id=request_id, retry_after=_retry_after(response)
                )
            raise UnavailableError(
                f"{method} {path} failed: {what}; not retried, since GHL may have acted on it.",
                status=status,
                method=method,
                path=path,
                request_id=request_id,
            )
        if not 200 <= status < 300:
            raise _error_for(response, method, path, self.location_id)
        return response


def _contact_path(ghl_id: str, suffix: str = "") -> str:
    if not ghl_id:
        raise ValueError("ghl_id must not be empty")
    return f"/contacts/{quote(ghl_id, safe='')}{suffix}"


def _has_dedupe_key(fields: Mapping[str, object]) -> bool:
    """True when GHL's upsert will match on email or phone instead of creating blindly."""
    return any(isinstance(v := fields.get(k), str) and v.strip() for k in ("email", "phone"))


def _parse(response: httpx.Response, model: type[ModelT], method: str, path: str) -> ModelT:
    """Validate a 2xx body into ``model``; anything else is a ``MalformedResponseError``."""
    content = response.content
    if not content and response.status_code == 204:
        content = b"{}"
    try:
        return model.model_validate_json(content)
    except pydantic.ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False, include_context=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        # ``from None``: pydantic's own message quotes the body, which is not ours to print.
        raise MalformedResponseError(
            f"GHL answered {response.status_code} to {method} {path} with a body that is not "
            f"a valid {model.__name__} ({where}: {first['msg']}).",
            status=response.status_code,
            method=method,
            path=path,
            request_id=_request_id(response),
        ) from None


def _error_for(response: httpx.Response, method: str, path: str, location_id: str) -> GhlsyncError:
    """The ghlsync error for a non-2xx answer that retrying will not fix."""
    status = response.status_code
    redact = _redactor(response)
    body = _redact_json(_error_json(response), redact)
    messages = [redact(m) for m in _error_messages(body)]
    summary = "; ".join(messages)[:500] or response.reason_phrase or "no message"
    where = f"{status} on {method} {path}"

    def api(cls: type[ApiError], text: str) -> ApiError:
        return cls(
            f"{text} ({where}): {summary}",
            status=status,
            method=method,
            path=path,
            request_id=_request_id(response),
            details=messages,
            body=body,
        )

    if status == 401:
        return AuthError(f"GHL rejected the access token ({where}): {summary}")
    if status == 403:
        return ConfigError(
            f"GHL refused access ({where}): {summary}",
            hint=f"Check that the token belongs to location {location_id} (--location) and has "
            "the contacts.readonly and contacts.write scopes; reconnect if it does not.",
        )
    if status == 404 or (status == 400 and any("not found" in m.lower() for m in messages)):
        return api(NotFoundError, "GHL has no such contact")
    if status in (400, 422):
        return api(ValidationError, "GHL refused the request")
    if status in (409, 412):
        return api(ApiError, "GHL reported a conflict")
    return api(ApiError, "GHL answered with an error")


def _error_json(response: httpx.Response) -> object:
    try:
        return response.json()
    except ValueError:
        return response.text[:500] or None


def _error_messages(body: object) -> list[str]:
    if isinstance(body, dict):
        try:
            return ErrorBody.model_validate(body).messages()
        except pydantic.ValidationError:
            return []
    return [body] if isinstance(body, str) else []


def _redactor(response: httpx.Response) -> Callable[[str], str]:
    """Blank out the request's credential wherever GHL echoes it back."""
    authorization = response.request.headers.get("authorization", "")
    secret = authorization.partition(" ")[2].strip() or authorization.strip()
    if len(secret) < 8:
        return lambda text: text
    return lambda text: text.replace(secret, "[redacted]")


def _redact_json(value: object, redact: Callable[[str], str]) -> object:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [_redact_json(item, redact) for item in value]
    if isinstance(value, dict):
        return {key: _redact_json(item, redact) for key, item in value.items()}
    return value


def _request_id(response: httpx.Response) -> str | None:
    for name in _REQUEST_ID_HEADERS:
        value = response.headers.get(name)
        if value:
            return str(value)
    return None


def _retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds (a number or an HTTP date), or None when absent or unreadable."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return seconds if seconds > 0 else 0.0
