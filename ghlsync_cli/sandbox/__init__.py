"""A local fake of GHL's API v2 contacts endpoints, for ``make demo``, the tests and benchmarks.

It answers like GHL (Version 2021-07-28): the same routes, bodies, error shapes, normalisation,
rate-limit headers and signed webhooks, backed by an in-memory store that pages through 100,000
contacts in milliseconds. Faults, rate limits and "edits in the GHL UI" are driven through
``/_sandbox/*`` or directly on ``Sandbox``.

    with SandboxServer(SandboxConfig(seed_count=1000)) as server:
        httpx.post(f"{server.url}/contacts/search", ...)
"""

from ghlsync_cli.sandbox.app import create_app
from ghlsync_cli.sandbox.errors import SandboxApiError
from ghlsync_cli.sandbox.faults import FAULT_MODES, FaultRule
from ghlsync_cli.sandbox.ratelimit import RateLimitSettings
from ghlsync_cli.sandbox.server import SandboxConfig, SandboxServer, serve_sandbox
from ghlsync_cli.sandbox.signing import WEBHOOK_PUBLIC_KEY_PATH, sign_body, verify_body
from ghlsync_cli.sandbox.state import DEFAULT_LOCATION_ID, DEFAULT_TOKEN, Sandbox

__all__ = [
    "DEFAULT_LOCATION_ID",
    "DEFAULT_TOKEN",
    "FAULT_MODES",
    "WEBHOOK_PUBLIC_KEY_PATH",
    "FaultRule",
    "RateLimitSettings",
    "Sandbox",
    "SandboxApiError",
    "SandboxConfig",
    "SandboxServer",
    "create_app",
    "serve_sandbox",
    "sign_body",
    "verify_body",
]
