"""The ``/_sandbox`` admin routes: staging data, switches and counters, without auth."""

from __future__ import annotations

import httpx

from ghlsync_cli.sandbox import DEFAULT_LOCATION_ID as LOCATION
from ghlsync_cli.sandbox import Sandbox


def test_health_and_seed(admin: httpx.Client, sandbox: Sandbox):
    seeded = admin.post("/seed", json={"count": 25, "seed": 4})
    health = admin.get("/health")
    listing = admin.get("/contacts")

    assert seeded.json() == {"seeded": 25, "total": 25, "locationId": LOCATION}
    assert health.json() == {"status": "ok", "locationId": LOCATION, "contacts": 25}
    assert listing.json()["total"] == 25
    assert len(listing.json()["contacts"]) == 25
    assert admin.post("/seed", json={"count": "many"}).status_code == 400


def test_ui_edits_through_admin_routes(admin: httpx.Client, api: httpx.Client, sandbox: Sandbox):
    created = admin.post("/contacts", json={"firstName": "Ui", "email": "ui@example.com"})
    contact_id = created.json()["contact"]["id"]
    patched = admin.patch(f"/contacts/{contact_id}", json={"city": "Denver"})
    duplicate = admin.post("/contacts", json={"email": "UI@example.com"})
    fetched = admin.get(f"/contacts/{contact_id}")
    deleted = admin.delete(f"/contacts/{contact_id}")
    missing = admin.get(f"/contacts/{contact_id}")

    assert created.status_code == 201
    assert patched.json()["contact"]["city"] == "Denver"
    assert duplicate.status_code == 400
    assert fetched.json()["contact"]["city"] == "Denver"
    assert deleted.json() == {"deleted": contact_id}
    assert missing.status_code == 404
    assert api.get(f"/contacts/{contact_id}").status_code == 400


def test_faults_ratelimit_settings_and_webhooks_switches(admin: httpx.Client, sandbox: Sandbox):
    rule = {"path_regex": "^/contacts/search$", "mode": "status", "status": 502, "count": 1}

    set_rules = admin.post("/faults", json={"rules": [rule]})
    listed = admin.get("/faults")
    cleared = admin.delete("/faults")
    limits = admin.post("/ratelimit", json={"enabled": True, "max": 7, "interval_ms": 900})
    settings = admin.post("/settings", json={"allow_duplicates": True})
    hooks = admin.post("/webhooks", json={"url": "http://127.0.0.1:9/none", "enabled": False})

    assert set_rules.json()["rules"][0]["status"] == 502
    assert listed.json()["rules"][0]["remaining"] == 1
    assert cleared.json() == {"rules": []}
    assert sandbox.faults.rules() == []
    assert limits.json() == {"enabled": True, "max": 7, "interval_ms": 900, "daily": 200000}
    assert sandbox.rate_limiter.settings.max_requests == 7
    assert settings.json() == {"locationId": LOCATION, "allow_duplicates": True}
    assert sandbox.allows_duplicates()
    assert hooks.json()["enabled"] is False
    assert admin.post("/webhooks/wait", json={"timeout": 1}).json() == {"idle": True}
    assert admin.post("/ratelimit", json={"max": 0}).status_code == 400


def test_stats_count_api_routes_only(admin: httpx.Client, api: httpx.Client, sandbox: Sandbox):
    api.post("/contacts/search", json={"locationId": LOCATION, "pageLimit": 1})
    api.post("/contacts/search", json={"locationId": LOCATION, "pageLimit": 1})
    api.get("/contacts/abc")
    admin.get("/health")

    stats = admin.get("/stats").json()
    reset = admin.post("/stats/reset").json()

    assert stats["requests"] == {"GET /contacts/{contactId}": 1, "POST /contacts/search": 2}
    assert stats["total"] == 3
    assert stats["rate_limited"] == 0
    assert stats["faults"] == 0
    assert "webhooks" in stats
    assert reset["total"] == 0


def test_tokens_can_be_issued_and_revoked(admin: httpx.Client, api: httpx.Client, sandbox: Sandbox):
    issued = admin.post("/tokens", json={"token": "rotated-token"})
    headers = {"Authorization": "Bearer rotated-token"}
    works = api.get("/contacts/abc", headers=headers)
    revoked = admin.delete("/tokens/rotated-token")
    rejected = api.get("/contacts/abc", headers=headers)

    assert issued.status_code == 201
    assert works.status_code == 400
    assert revoked.json() == {"revoked": True}
    assert rejected.status_code == 401


def test_reset_forgets_contacts_and_rules(admin: httpx.Client, sandbox: Sandbox):
    sandbox.seed(5)
    admin.post("/faults", json={"rules": [{"path_regex": "/", "mode": "malformed"}]})

    assert admin.post("/reset").json() == {"status": "ok"}
    assert sandbox.count_contacts() == 0
    assert sandbox.faults.rules() == []
