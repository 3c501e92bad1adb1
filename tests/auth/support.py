"""Helpers for OAuth tests: an app registered with the sandbox, a "browser", and canary secrets.

The browser is what a person does on GHL's choose-location page: follow the printed URL, choose a
location, and let GHL redirect to ghlsync's loopback callback. httpx does exactly that here.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
import webbrowser
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx
import pytest
from typer.testing import Result

from ghlsync_cli.sandbox import DEFAULT_LOCATION_ID, Sandbox
from ghlsync_cli.sandbox.oauth import OAuthProvider
from tests.helpers import Cli

URL_PATTERN = re.compile(r"^https?://\S+/oauth/chooselocation\?\S+$", re.MULTILINE)


@dataclass
class OAuthApp:
    """A marketplace app registered with the sandbox, its secret a canary value."""

    provider: OAuthProvider
    client_id: str
    client_secret: str

    @property
    def sandbox(self) -> Sandbox:
        """The sandbox the app is registered with."""
        return self.provider.sandbox


def oauth_app(sandbox: Sandbox) -> Iterator[OAuthApp]:
    """Fixture body: a reset OAuth provider with a fresh app (reset again afterwards)."""
    provider = OAuthProvider.for_sandbox(sandbox)
    provider.reset()
    client_id = f"app-{secrets.token_hex(6)}"
    client_secret = f"canary-client-secret-{secrets.token_hex(16)}"
    provider.register_client(client_id, client_secret)
    yield OAuthApp(provider, client_id, client_secret)
    provider.reset()


def choose(url: str, location_id: str = DEFAULT_LOCATION_ID, **extra: str) -> str:
    """The authorization URL with the user's choice of location (and any tampering) applied."""
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query.update({"location_id": location_id, **extra})
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))


def follow(url: str, location_id: str = DEFAULT_LOCATION_ID, **extra: str) -> httpx.Response:
    """Do what the browser does: open the page, choose, follow GHL's redirect to the callback."""
    return httpx.get(choose(url, location_id, **extra), follow_redirects=True, timeout=10)


@dataclass
class FakeBrowser:
    """Stands in for ``webbrowser.open``: follows the URL from a thread, as a browser would."""

    location_id: str = DEFAULT_LOCATION_ID
    extra: dict[str, str] = field(default_factory=dict)
    does_nothing: bool = False
    urls: list[str] = field(default_factory=list)
    responses: list[httpx.Response] = field(default_factory=list)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __call__(self, url: str, *args: object, **kwargs: object) -> bool:
        """``webbrowser.open(url)``: True, the browser "opened"."""
        self.urls.append(url)
        if not self.does_nothing:
            thread = threading.Thread(target=self._visit, args=(url,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return True

    def _visit(self, url: str) -> None:
        self.responses.append(follow(url, self.location_id, **self.extra))

    def join(self) -> None:
        """Wait for the visits to end."""
        for thread in self._threads:
            thread.join(timeout=10)


def secrets_file_values(path: Path) -> dict[str, str]:
    """Every secret in an opt-in secrets file."""
    data = json.loads(path.read_text())
    return dict(data["secrets"]["ghlsync"])


def database_bytes(db: Path) -> bytes:
    """The database file and any WAL/journal beside it, as another program could read them."""
    return b"".join(p.read_bytes() for p in sorted(db.parent.glob(db.name + "*")))


def assert_absent(secrets_: dict[str, str], *haystacks: tuple[str, bytes | str]) -> None:
    """No secret value appears in any of the named haystacks."""
    for where, haystack in haystacks:
        data = haystack.encode() if isinstance(haystack, str) else haystack
        for name, value in secrets_.items():
            assert value.encode() not in data, f"{name} leaked into {where}"


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll until ``predicate()`` is true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def connect_in_process(
    cli: Cli,
    app: OAuthApp,
    monkeypatch: pytest.MonkeyPatch,
    location_id: str = DEFAULT_LOCATION_ID,
    *args: str,
    browser: FakeBrowser | None = None,
    **env: str,
) -> Result:
    """``ghlsync connect --oauth`` in-process, the browser played by httpx from a thread."""
    browser = browser or FakeBrowser(location_id)
    monkeypatch.setattr(webbrowser, "open", browser)
    result = cli(
        "connect",
        "--oauth",
        "--client-id",
        app.client_id,
        "--client-secret-stdin",
        *args,
        input=app.client_secret + "\n",
        **{"GHLSYNC_OAUTH_AUTHORIZE_URL": authorize_base(cli), **env},
    )
    browser.join()
    return result


def authorize_base(cli: Cli) -> str:
    """The sandbox's choose-location page, where GHLSYNC_OAUTH_AUTHORIZE_URL points in tests."""
    return f"{cli.api_base}/oauth/chooselocation"
