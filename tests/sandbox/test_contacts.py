"""Contact CRUD, tags, auth, versions and GHL's normalisation rules, over real HTTP."""

from __future__ import annotations

from typing import Any

import httpx

from ghlsync_cli.ghl.models import (
    ContactEnvelope,
    DeleteResponse,
    ErrorBody,
    TagsResponse,
    UpdateResponse,
    UpsertResponse,
)
from ghlsync_cli.sandbox import DEFAULT_LOCATION_ID as LOCATION
from ghlsync_cli.sandbox import Sandbox
from ghlsync_cli.sandbox.clock import ms_from_value


def _create(api: httpx.Client, **fields: Any) -> dict[str, Any]:
    response = api.post("/contacts/", json={"locationId": LOCATION, **fields})
    assert response.status_code == 201, response.text
    return ContactEnvelope.model_validate(response.json()).contact.payload()


def test_missing_or_unknown_token_is_401(sandbox_server, sandbox: Sandbox):
    with httpx.Client(base_url=sandbox_server.url) as client:
        missing = client.get("/contacts/abc", headers={"Version": "2021-07-28"})
        unknown = client.get(
            "/contacts/abc", headers={"Version": "2021-07-28", "Authorization": "Bearer nope"}
        )

    for response in (missing, unknown):
        assert response.status_code == 401
        assert response.json() == {
            "statusCode": 401,
            "message": "Invalid JWT",
            "error": "Unauthorized",
        }


def test_missing_version_header_is_400(sandbox_server, sandbox: Sandbox):
    with httpx.Client(base_url=sandbox_server.url) as client:
        response = client.post(
            "/contacts/search",
            headers={"Authorization": "Bearer sandbox-token"},
            json={"locationId": LOCATION, "pageLimit": 1},
        )

    assert response.status_code == 400
    assert response.json() == {"statusCode": 400, "message": "Version header is required"}


def test_other_location_is_403(api: httpx.Client, sandbox: Sandbox):
    sandbox.add_location("otherLocation0000001", "other-token")
    other = sandbox.create_contact("otherLocation0000001", {"firstName": "Elsewhere"})

    search = api.post(
        "/contacts/search", json={"locationId": "otherLocation0000001", "pageLimit": 1}
    )
    create = api.post("/contacts/", json={"locationId": "otherLocation0000001", "firstName": "X"})
    get = api.get(f"/contacts/{other['id']}")

    for response in (search, create, get):
        assert response.status_code == 403
        assert response.json()["message"] == "The token does not have access to this location."
    sandbox.revoke_token("other-token")


def test_create_normalises_like_ghl(api: httpx.Client, sandbox: Sandbox):
    contact = _create(
        api,
        name="Mary Ann Smith",
        email="Mary.Smith@Example.com",
        phone="(212) 555-0123",
        tags=[" VIP ", "vip", "Newsletter", ""],
        companyName="",
        website="https://acme.example.com",
        customFields=[{"id": "cf1", "field_value": "gold"}],
    )

    assert contact["firstName"] == "Mary"
    assert contact["lastName"] == "Ann Smith"
    assert contact["name"] == "Mary Ann Smith"
    assert contact["fullNameLowerCase"] == "mary ann smith"
    assert contact["email"] == "Mary.Smith@Example.com"
    assert contact["emailLowerCase"] == "mary.smith@example.com"
    assert contact["phone"] == "+12125550123"
    assert contact["tags"] == ["vip", "newsletter"]
    assert contact["dnd"] is False
    assert contact["type"] == "lead"
    assert contact["customFields"] == [{"id": "cf1", "value": "gold"}]
    assert contact["website"] == "https://acme.example.com"
    assert "companyName" not in contact
    assert "address1" not in contact
    assert contact["dateAdded"] == contact["dateUpdated"]
    assert contact["dateAdded"].endswith("Z")
    assert len(contact["id"]) == 20
    assert contact["id"].isalnum()


def test_create_duplicate_is_refused_unless_allowed(api: httpx.Client, sandbox: Sandbox):
    first = _create(
        api, firstName="Ann", lastName="Lee", email="ann@example.com", phone="+14155550100"
    )

    by_email = api.post("/contacts/", json={"locationId": LOCATION, "email": "ANN@example.com"})
    by_phone = api.post("/contacts/", json={"locationId": LOCATION, "phone": "415-555-0100"})
    sandbox.set_allow_duplicates(True)
    allowed = api.post("/contacts/", json={"locationId": LOCATION, "email": "ann@example.com"})

    assert by_email.status_code == 400
    error = ErrorBody.model_validate(by_email.json())
    assert error.message == "This location does not allow duplicated contacts."
    assert error.meta == {
        "contactName": "Ann Lee",
        "contactId": first["id"],
        "matchingField": "email",
    }
    assert by_phone.status_code == 400
    assert by_phone.json()["meta"]["matchingField"] == "phone"
    assert allowed.status_code == 201


def test_validation_errors_are_422(api: httpx.Client, sandbox: Sandbox):
    bad_email = api.post("/contacts/", json={"locationId": LOCATION, "email": "not-an-email"})
    bad_phone = api.post("/contacts/", json={"locationId": LOCATION, "phone": "12345"})
    no_location = api.post("/contacts/", json={"firstName": "X"})
    bad_json = api.post(
        "/contacts/", content=b"{nope", headers={"Content-Type": "application/json"}
    )

    assert bad_email.status_code == 422
    assert bad_email.json() == {
        "statusCode": 422,
        "message": ["email must be an email"],
        "error": "Unprocessable Entity",
    }
    assert bad_phone.status_code == 422
    assert bad_phone.json()["message"] == ["phone must be a valid phone number"]
    assert no_location.status_code == 422
    assert bad_json.status_code == 400
    assert sandbox.count_contacts() == 0


def test_upsert_creates_then_updates_by_email_then_phone(api: httpx.Client, sandbox: Sandbox):
    def upsert(**fields: Any) -> UpsertResponse:
        response = api.post("/contacts/upsert", json={"locationId": LOCATION, **fields})
        assert response.status_code == 200, response.text
        return UpsertResponse.model_validate(response.json())

    created = upsert(email="joe@example.com", firstName="Joe", tags=["a", "b"])
    by_email = upsert(email="JOE@example.com", lastName="Bloggs", tags=["c"])
    by_phone_new = upsert(phone="+13125550111", firstName="Pat")
    by_phone = upsert(phone="312-555-0111", companyName="Initech")

    assert created.new is True
    assert created.traceId
    assert by_email.new is False
    assert by_email.contact.id == created.contact.id
    assert by_email.contact.name == "Joe Bloggs"
    assert by_email.contact.tags == ["c"]
    assert by_phone_new.new is True
    assert by_phone.new is False
    assert by_phone.contact.id == by_phone_new.contact.id
    assert by_phone.contact.companyName == "Initech"
    assert sandbox.count_contacts() == 2


def test_upsert_ignores_a_phone_that_belongs_to_another_contact(sandbox: Sandbox):
    joe = sandbox.create_contact(LOCATION, {"email": "joe@example.com"})
    pat = sandbox.create_contact(LOCATION, {"phone": "+13125550111"})

    is_new, contact = sandbox.upsert_contact(
        LOCATION, {"email": "joe@example.com", "phone": "+13125550111", "city": "Austin"}
    )

    assert is_new is False
    assert contact["id"] == joe["id"]
    assert contact["city"] == "Austin"
    assert "phone" not in contact
    assert sandbox.find_contact(pat["id"])["phone"] == "+13125550111"


def test_put_is_partial_and_null_or_empty_clears(api: httpx.Client, sandbox: Sandbox):
    contact = _create(
        api,
        firstName="Ann",
        lastName="Lee",
        email="ann@example.com",
        city="Boston",
        companyName="Acme",
        tags=["x", "y"],
        website="https://a.example.com",
    )

    response = api.put(
        f"/contacts/{contact['id']}",
        json={"lastName": None, "city": "", "tags": ["Z"], "timezone": "America/Chicago"},
    )

    assert response.status_code == 200, response.text
    updated = UpdateResponse.model_validate(response.json())
    assert updated.succeded is True
    assert updated.contact is not None
    after = updated.contact.payload()
    assert after["firstName"] == "Ann"
    assert "lastName" not in after
    assert after["name"] == "Ann"
    assert "city" not in after
    assert after["companyName"] == "Acme"
    assert after["email"] == "ann@example.com"
    assert after["tags"] == ["z"]
    assert after["website"] == "https://a.example.com"
    assert after["timezone"] == "America/Chicago"
    assert ms_from_value(after["dateUpdated"]) > ms_from_value(contact["dateUpdated"])
    assert after["dateAdded"] == contact["dateAdded"]


def test_put_to_another_contacts_email_is_refused(api: httpx.Client, sandbox: Sandbox):
    _create(api, email="one@example.com")
    two = _create(api, email="two@example.com")

    response = api.put(f"/contacts/{two['id']}", json={"email": "One@Example.com"})

    assert response.status_code == 400
    assert response.json()["meta"]["matchingField"] == "email"


def test_tags_add_and_remove(api: httpx.Client, sandbox: Sandbox):
    contact = _create(api, firstName="T", tags=["keep"])

    added = api.post(f"/contacts/{contact['id']}/tags", json={"tags": ["New", "keep", "other"]})
    removed = api.request(
        "DELETE", f"/contacts/{contact['id']}/tags", json={"tags": ["OTHER", "missing"]}
    )
    bad = api.post(f"/contacts/{contact['id']}/tags", json={"tags": "nope"})

    assert added.status_code == 201
    assert TagsResponse.model_validate(added.json()).tags == ["keep", "new", "other"]
    assert removed.status_code == 200
    assert removed.json() == {"tags": ["keep", "new"]}
    assert bad.status_code == 422
    assert sandbox.find_contact(contact["id"])["tags"] == ["keep", "new"]


def test_delete_then_get_is_not_found(api: httpx.Client, sandbox: Sandbox):
    contact = _create(api, firstName="Gone")

    deleted = api.delete(f"/contacts/{contact['id']}")
    get = api.get(f"/contacts/{contact['id']}")
    again = api.delete(f"/contacts/{contact['id']}")

    assert deleted.status_code == 200
    assert DeleteResponse.model_validate(deleted.json()).succeded is True
    assert get.status_code == 400
    assert get.json() == {"statusCode": 400, "message": "Contact not found"}
    assert again.status_code == 400


def test_get_returns_unknown_keys_and_validates(api: httpx.Client, sandbox: Sandbox):
    sandbox.seed(5, seed=3)
    contact_id = sandbox.list_contacts()[0]["id"]

    response = api.get(f"/contacts/{contact_id}")

    assert response.status_code == 200
    contact = ContactEnvelope.model_validate(response.json()).contact
    assert contact.id == contact_id
    assert contact.model_extra is not None
    assert contact.model_extra["type"] in ("lead", "customer")
    assert "customFields" in contact.model_extra


def test_unknown_route_is_nest_style_404(api: httpx.Client, sandbox: Sandbox):
    unknown_path = api.get("/locations/abc")
    unknown_method = api.patch("/contacts/abc", json={})

    assert unknown_path.status_code == 404
    assert unknown_path.json() == {
        "statusCode": 404,
        "message": "Cannot GET /locations/abc",
        "error": "Not Found",
    }
    assert unknown_method.status_code == 404
