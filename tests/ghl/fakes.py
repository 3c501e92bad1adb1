"""A stateful in-memory GHL contacts API (an ``httpx.MockTransport`` handler) and a fake clock.

``FakeGHL`` answers like GHL does (shapes from the official specs), can enforce GHL's rate limit
on a ``FakeClock`` with the real ``X-RateLimit-*`` headers, and can be told to fail the next
requests (statuses, bodies, transport errors) so the client's error handling is exercised
through real HTTP exchanges rather than mocks of our own code.
"""

from __future__ import annotations

import itertools
import json
from collections import deque
from collections.abc import Callable, Generator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

TOKEN = "pit-5ecret-token-0123456789abcdef"
LOCATION_ID = "loc-123"

Fault = Callable[[httpx.Request], httpx.Response]


class FakeClock:
    """A monotonic clock that moves only when something sleeps on it (or a test advances it)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)

    def advance(self, seconds: float) -> None:
        self.now += seconds


class StaticBearer(httpx.Auth):
    """Adds a fixed bearer token, as the real ``auth.BearerAuth`` would."""

    def __init__(self, token: str) -> None:
        self._token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request


def error(status: int, message: str | list[str], **extra: Any) -> httpx.Response:
    """A GHL-style error answer."""
    return httpx.Response(status, json={"statusCode": status, "message": message, **extra})


class FakeGHL:
    """One GHL location's contacts API in memory; call it with an ``httpx.Request``."""

    def __init__(
        self,
        *,
        location_id: str = LOCATION_ID,
        token: str = TOKEN,
        clock: FakeClock | None = None,
        rate_max: int | None = None,
        rate_interval: float = 10.0,
        daily_limit: int = 200_000,
        latency: float = 0.0,
    ) -> None:
        self.location_id = location_id
        self.token = token
        self.clock = clock or FakeClock()
        self.rate_max = rate_max
        self.rate_interval = rate_interval
        self.daily_limit = daily_limit
        self.daily_used = 0
        self.latency = latency
        self.contacts: dict[str, dict[str, Any]] = {}
        self.requests: list[httpx.Request] = []
        self.faults: deque[Fault] = deque()
        self.arrivals: deque[float] = deque()
        self.foreign: deque[float] = deque()
        self.rate_limited = 0
        self._ids = itertools.count(1)
        self._base_time = datetime(2025, 1, 1, tzinfo=UTC)
        self._ticks = itertools.count(1)

    # -- scripting ---------------------------------------------------------------------------

    def fail_next(self, response: httpx.Response | Fault, *, times: int = 1) -> None:
        """Answer the next ``times`` requests with ``response`` instead of handling them."""
        for _ in range(times):
            if isinstance(response, httpx.Response):
                self.faults.append(_copy_of(response))
            else:
                self.faults.append(response)

    def raise_next(self, exc_type: type[httpx.TransportError], *, times: int = 1) -> None:
        """Make the next ``times`` requests fail with a transport error."""

        def fault(request: httpx.Request) -> httpx.Response:
            raise exc_type("simulated", request=request)

        self.fail_next(fault, times=times)

    def add_contact(self, **fields: Any) -> dict[str, Any]:
        """Put a contact straight into the store (as if made in the GHL UI)."""
        contact_id = fields.pop("id", None) or f"c{next(self._ids):05d}"
        now = self._timestamp()
        contact: dict[str, Any] = {"id": contact_id, "locationId": self.location_id, "tags": []}
        contact |= {"dateAdded": now, "dateUpdated": now, **fields}
        self.contacts[contact_id] = contact
        return contact

    def foreign_requests(self, count: int) -> None:
        """Another process sharing the location's limit sends ``count`` requests now."""
        self.foreign.extend([self.clock()] * count)

    # -- the handler -------------------------------------------------------------------------

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.clock.advance(self.latency / 2)
        try:
            response = self._answer(request)
        finally:
            self.clock.advance(self.latency / 2)
        return response

    def _answer(self, request: httpx.Request) -> httpx.Response:
        if self.faults:
            return self.faults.popleft()(request)
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return error(401, "Invalid JWT", error="Unauthorized")
        if request.headers.get("Version") != "2021-07-28":
            return error(400, "Version header was not found")
        limited = self._rate_limit()
        if limited is not None:
            return limited
        response = self._route(request)
        response.headers.update(self._rate_headers())
        return response

    def _rate_limit(self) -> httpx.Response | None:
        now = self.clock()
        for window in (self.arrivals, self.foreign):
            while window and window[0] <= now - self.rate_interval:
                window.popleft()
        in_window = len(self.arrivals) + len(self.foreign)
        if self.daily_used >= self.daily_limit or (
            self.rate_max is not None and in_window >= self.rate_max
        ):
            self.rate_limited += 1
            response = error(429, "Too many requests")
            response.headers["Retry-After"] = str(int(self.rate_interval))
            response.headers.update(self._rate_headers())
            return response
        self.arrivals.append(now)
        self.daily_used += 1
        return None

    def _rate_headers(self) -> dict[str, str]:
        limit = self.rate_max or 100
        used = len(self.arrivals) + len(self.foreign)
        return {
            "X-RateLimit-Max": str(limit),
            "X-RateLimit-Interval-Milliseconds": str(int(self.rate_interval * 1000)),
            "X-RateLimit-Remaining": str(max(0, limit - used)),
            "X-RateLimit-Limit-Daily": str(self.daily_limit),
            "X-RateLimit-Daily-Remaining": str(max(0, self.daily_limit - self.daily_used)),
        }

    def _route(self, request: httpx.Request) -> httpx.Response:
        parts = request.url.path.strip("/").split("/")
        body = json.loads(request.content) if request.content else {}
        match request.method, parts:
            case "POST", ["contacts", "search"]:
                return self._search(body)
            case "POST", ["contacts"]:
                return self._create(body)
            case "POST", ["contacts", "upsert"]:
                return self._upsert(body)
            case "GET", ["contacts", contact_id]:
                return self._with_contact(contact_id, lambda c: {"contact": c})
            case "PUT", ["contacts", contact_id]:
                return self._with_contact(contact_id, lambda c: self._update(c, body))
            case "DELETE", ["contacts", contact_id]:
                return self._with_contact(contact_id, self._delete)
            case "POST", ["contacts", contact_id, "tags"]:
                return self._with_contact(contact_id, lambda c: self._tags(c, body, add=True))
            case "DELETE", ["contacts", contact_id, "tags"]:
                return self._with_contact(contact_id, lambda c: self._tags(c, body, add=False))
        return error(404, f"Cannot {request.method} {request.url.path}", error="Not Found")

    # -- resources ---------------------------------------------------------------------------

    def _search(self, body: dict[str, Any]) -> httpx.Response:
        if body.get("locationId") != self.location_id:
            return error(403, "The token does not have access to this location.")
        since = None
        for item in body.get("filters", []):
            if item["field"] == "dateUpdated" and item["operator"] == "range":
                since = item["value"]["gte"]
        matching = sorted(
            (c for c in self.contacts.values() if since is None or c["dateUpdated"] >= since),
            key=_sort_key,
        )
        after = body.get("searchAfter")
        if after is not None:
            matching_after = [c for c in matching if _sort_key(c) > (after[0], after[1])]
        else:
            matching_after = matching
        page = matching_after[: body.get("pageLimit", 100)]
        contacts = [{**c, "searchAfter": list(_sort_key(c))} for c in page]
        return httpx.Response(200, json={"contacts": contacts, "total": len(matching)})

    def _create(self, body: dict[str, Any]) -> httpx.Response:
        duplicate = self._find_duplicate(body)
        if duplicate is not None:
            return error(
                400,
                "This location does not allow duplicated contacts.",
                meta={"contactName": duplicate.get("firstName"), "contactId": duplicate["id"]},
            )
        contact = self.add_contact(**_writable(body))
        return httpx.Response(201, json={"contact": contact})

    def _upsert(self, body: dict[str, Any]) -> httpx.Response:
        existing = self._find_duplicate(body)
        if existing is None:
            contact = self.add_contact(**_writable(body))
            return httpx.Response(201, json={"new": True, "contact": contact, "traceId": "t1"})
        existing |= _writable(body) | {"dateUpdated": self._timestamp()}
        return httpx.Response(200, json={"new": False, "contact": existing, "traceId": "t2"})

    def _update(self, contact: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        contact |= _writable(body) | {"dateUpdated": self._timestamp()}
        return {"succeded": True, "contact": contact}

    def _delete(self, contact: dict[str, Any]) -> dict[str, Any]:
        del self.contacts[contact["id"]]
        return {"succeded": True}

    def _tags(self, contact: dict[str, Any], body: dict[str, Any], *, add: bool) -> dict[str, Any]:
        tags = set(contact.get("tags") or [])
        tags = tags | set(body["tags"]) if add else tags - set(body["tags"])
        contact["tags"] = sorted(tags)
        contact["dateUpdated"] = self._timestamp()
        return {"tags": contact["tags"]}

    def _with_contact(
        self, contact_id: str, answer: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> httpx.Response:
        contact = self.contacts.get(contact_id)
        if contact is None:
            return error(400, "Contact not found")
        return httpx.Response(200, json=answer(contact))

    def _find_duplicate(self, body: dict[str, Any]) -> dict[str, Any] | None:
        for contact in self.contacts.values():
            for key in ("email", "phone"):
                if body.get(key) and contact.get(key) == body[key]:
                    return contact
        return None

    def _timestamp(self) -> str:
        moment = self._base_time + timedelta(seconds=next(self._ticks))
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _sort_key(contact: dict[str, Any]) -> tuple[int, str]:
    updated = datetime.fromisoformat(contact["dateUpdated"].replace("Z", "+00:00"))
    return int(updated.timestamp() * 1000), contact["id"]


def _writable(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in ("id", "locationId")}


def _copy_of(response: httpx.Response) -> Fault:
    status, headers, content = response.status_code, response.headers, response.content
    return lambda request: httpx.Response(status, headers=headers, content=content)
