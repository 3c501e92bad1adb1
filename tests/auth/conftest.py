"""Fixtures for OAuth tests: an app registered with the (reset) sandbox."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ghlsync_cli.sandbox import Sandbox
from tests.auth.support import OAuthApp, oauth_app


@pytest.fixture
def oauth(sandbox: Sandbox) -> Iterator[OAuthApp]:
    """A marketplace app with a canary client secret, on a reset OAuth provider."""
    yield from oauth_app(sandbox)
