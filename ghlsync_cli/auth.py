"""Where access tokens come from, and the httpx.Auth that puts them on requests.

Order of sources for a location's token:
1. ``GHLSYNC_TOKEN`` — CI, containers, and servers with no keyring;
2. ``$CREDENTIALS_DIRECTORY/ghlsync-token`` — systemd ``LoadCredential=ghlsync-token:/path``;
3. the OS keyring (service ``ghlsync``, user ``<location_id>:access_token``).
A machine without a usable keyring backend is an error with a hint (exit 78), never a silent
fallback to plaintext or to a null backend. Tokens never reach argv, logs, the database or messages.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Mapping
from pathlib import Path

import httpx
import keyring
import keyring.backend
import keyring.errors

from ghlsync_cli.errors import AuthError, NoKeyringError

SERVICE = "ghlsync"
TOKEN_ENV = "GHLSYNC_TOKEN"
CREDENTIAL_NAME = "ghlsync-token"


def _account(location_id: str, kind: str = "access_token") -> str:
    return f"{location_id}:{kind}"


class TokenStore:
    """Reads and writes a location's secrets: keyring, with env and systemd credential overrides."""

    def __init__(
        self,
        *,
        backend: keyring.backend.KeyringBackend | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._backend = backend
        self._environ = environ if environ is not None else os.environ

    @property
    def env_token(self) -> str | None:
        """The token from GHLSYNC_TOKEN, if set."""
        token = self._environ.get(TOKEN_ENV, "").strip()
        return token or None

    def credential_token(self) -> str | None:
        """The token from a systemd credential, if one was passed."""
        directory = self._environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            return None
        path = Path(directory) / CREDENTIAL_NAME
        try:
            token = path.read_text().strip()
        except OSError:
            return None
        return token or None

    def source(self, location_id: str) -> str:
        """Where the token for this location comes from: env, credential or keyring."""
        if self.env_token:
            return "env"
        if self.credential_token():
            return "credential"
        return "keyring"

    def access_token(self, location_id: str) -> str:
        """The token to use for this location, or AuthError (exit 77) when there is none."""
        token = self.env_token or self.credential_token()
        if token:
            return token
        stored = self._get(_account(location_id))
        if not stored:
            raise AuthError(f"No token is stored for location {location_id}.")
        return stored

    def save_access_token(self, location_id: str, token: str) -> None:
        """Store a private-integration token in the keyring."""
        backend = self._usable_backend()
        try:
            backend.set_password(SERVICE, _account(location_id), token)
        except keyring.errors.KeyringError as exc:
            raise NoKeyringError(
                f"The keyring refused to store the token: {type(exc).__name__}."
            ) from None

    def delete(self, location_id: str) -> bool:
        """Forget every secret of a location; False when nothing was stored."""
        try:
            backend = self._usable_backend()
        except NoKeyringError:
            return False
        removed = False
        for kind in ("access_token", "refresh_token"):
            try:
                backend.delete_password(SERVICE, _account(location_id, kind))
                removed = True
            except keyring.errors.PasswordDeleteError:
                pass
            except keyring.errors.KeyringError:
                return removed
        return removed

    def _get(self, account: str) -> str | None:
        backend = self._usable_backend()
        try:
            return backend.get_password(SERVICE, account)
        except keyring.errors.KeyringError as exc:
            raise NoKeyringError(f"The keyring could not be read: {type(exc).__name__}.") from None

    def _usable_backend(self) -> keyring.backend.KeyringBackend:
        backend = self._backend or keyring.get_keyring()
        if not is_usable_backend(backend):
            raise NoKeyringError(
                f"No usable keyring backend on this machine ({type(backend).__name__})."
            )
        return backend


def is_usable_backend(backend: keyring.backend.KeyringBackend) -> bool:
    """False for keyring's fail/null backends and an empty chainer (headless Linux)."""
    module = type(backend).__module__
    if module.startswith(("keyring.backends.fail", "keyring.backends.null")):
        return False
    inner = getattr(backend, "backends", None)
    if module.startswith("keyring.backends.chainer") and inner is not None:
        return any(is_usable_backend(b) for b in inner)
    try:
        return float(backend.priority) > 0
    except Exception:
        return False


class BearerAuth(httpx.Auth):
    """Adds ``Authorization: Bearer <token>``; the token is fetched lazily, once."""

    def __init__(self, token: Callable[[], str]) -> None:
        self._token_source = token
        self._token: str | None = None

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Attach the token to the request."""
        if self._token is None:
            self._token = self._token_source()
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request

    def __repr__(self) -> str:
        return "BearerAuth(<redacted>)"
