"""Wire models for the parts of the GHL API v2 (Version 2021-07-28) that ghlsync uses.

They validate what GHL sends at the edge, keep every key GHL sent (``extra="allow"``), and remember
which keys were present at all: an absent key means "not sent", an explicit ``null`` "cleared".
Shapes follow the official OpenAPI specs (contacts.json; the search response from the
2025-05-04 contacts spec, where each contact carries its ``searchAfter`` cursor).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class WireModel(BaseModel):
    """Base for GHL payloads: camelCase names as sent, unknown keys kept."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=False)


class GhlContact(WireModel):
    """A GHL contact as returned by get/search/create/upsert/update and sent in webhooks."""

    id: str = Field(min_length=1)
    locationId: str | None = None
    firstName: str | None = None
    lastName: str | None = None
    name: str | None = None
    email: str | None = None
    phone: str | None = None
    companyName: str | None = None
    address1: str | None = None
    city: str | None = None
    state: str | None = None
    postalCode: str | None = None
    country: str | None = None
    tags: list[str] | None = None
    dnd: bool | None = None
    source: str | None = None
    dateAdded: str | None = None
    dateUpdated: str | None = None
    searchAfter: list[int | float | str] | None = None

    def present_keys(self) -> set[str]:
        """Keys that were in the payload (with any value, null included)."""
        keys = set(self.model_fields_set)
        if self.model_extra:
            keys.update(self.model_extra)
        return keys

    def payload(self) -> dict[str, Any]:
        """The contact as GHL sent it: present keys only, nulls kept."""
        return self.model_dump(include=self.present_keys(), exclude={"searchAfter"})


# ``GhlContact.model_validate`` of a payload, minus the method's handling of its keyword
# arguments, which costs a sixth of validating a webhook's payload (a replay validates one per
# body). The same validator with the same (default) options: the same model or error.
validate_contact: Callable[[Any], GhlContact] = GhlContact.__pydantic_validator__.validate_python


class SearchResponse(WireModel):
    """``POST /contacts/search`` → ``{contacts, total}``."""

    contacts: list[GhlContact]
    total: int = 0


class ContactEnvelope(WireModel):
    """``GET /contacts/{id}`` and ``POST /contacts/`` → ``{contact}``."""

    contact: GhlContact


class UpsertResponse(WireModel):
    """``POST /contacts/upsert`` → ``{new, contact, traceId}``."""

    new: bool = False
    contact: GhlContact
    traceId: str | None = None


class UpdateResponse(WireModel):
    """``PUT /contacts/{id}`` → ``{succeded, contact}`` (GHL's spelling)."""

    succeded: bool | None = None
    contact: GhlContact | None = None


class TagsResponse(WireModel):
    """``POST``/``DELETE /contacts/{id}/tags`` → ``{tags}``."""

    tags: list[str] = Field(default_factory=list)


class DeleteResponse(WireModel):
    """``DELETE /contacts/{id}`` → ``{succeded}``."""

    succeded: bool | None = None


class ErrorBody(WireModel):
    """GHL's error DTOs: ``statusCode``, ``message`` (a string, or a list for 422), ``meta``."""

    statusCode: int | None = None
    message: str | list[str] | None = None
    error: str | None = None
    meta: dict[str, Any] | None = None

    def messages(self) -> list[str]:
        """The message(s) as a list of strings."""
        if self.message is None:
            return []
        return [self.message] if isinstance(self.message, str) else list(self.message)


class TokenResponse(WireModel):
    """``POST /oauth/token`` → access and refresh tokens (``GetAccessCodeSuccessfulResponseDto``)"""

    access_token: str
    token_type: str | None = None
    expires_in: int | None = None
    refresh_token: str | None = None
    scope: str | None = None
    userType: str | None = None
    locationId: str | None = None
    companyId: str | None = None
    userId: str | None = None
