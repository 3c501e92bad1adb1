"""Where secrets live, and the httpx.Auth classes that put access tokens on requests.

Order of sources for a location's access token:
1. ``GHLSYNC_TOKEN`` — CI, containers, and servers with no keyring (bypasses everything else);
2. ``$CREDENTIALS_DIRECTORY/ghlsync-token`` — systemd ``LoadCredential=ghlsync-token:/path``;
3. the secret store: the OS keyring (service ``ghlsync``), or — only when explicitly configured
   with ``GHLSYNC_SECRETS_FILE`` / the ``secrets_file`` setting — a JSON file kept at mode 0600.
A machine without a usable keyring backend and no secrets file is an error with a hint (exit 78),
never a silent fallback to plaintext or to a null backend. Secrets never reach argv, logs, the
database or messages.

Accounts in the secret store (service ``ghlsync``):
    ``<location_id>:access_token``    the access token (private-integration or OAuth)
    ``<location_id>:refresh_token``   the OAuth refresh token
    ``<location_id>:oauth``           OAuth metadata, JSON: client id, expiry (not secret)
    ``oauth-client:<client_id>``      an OAuth app's client secret

Why OAuth refreshes look the way they do: GHL refresh tokens are single-use. Every refresh consumes
the stored refresh token and returns a new one, so two processes refreshing at once would lose:
the second one's refresh token is already spent. ``OAuthAuth`` therefore refreshes under a
cross-process lock, re-reads the stored pair once it holds the lock (another process may have
refreshed already, and then its pair is simply used), and saves the new pair before the new access
token is used. The lock lives beside the secrets file when there is one (every process using it
must see the lock), else beside the database (writable even in the hardened systemd units).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import stat
import tempfile
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import httpx
import keyring
import keyring.backend
import keyring.errors
import platformdirs
import pydantic

from ghlsync_cli import __version__
from ghlsync_cli.crashpoints import crash_point
from ghlsync_cli.errors import (
    AuthError,
    ConfigError,
    MalformedResponseError,
    NoKeyringError,
    TryAgainError,
    UnavailableError,
)
from ghlsync_cli.ghl.models import TokenResponse
from ghlsync_cli.locks import waiting_lock
from ghlsync_cli.timeutil import format_time, parse_time

SERVICE = "ghlsync"
TOKEN_ENV = "GHLSYNC_TOKEN"
SECRETS_FILE_ENV = "GHLSYNC_SECRETS_FILE"
CREDENTIAL_NAME = "ghlsync-token"
TOKEN_PATH = "/oauth/token"
#: Refresh this long before the access token expires (less for tokens that live < 50 min).
REFRESH_MARGIN_SECONDS = 300.0
#: How long a process waits for another one that is refreshing the same location's token.
REFRESH_LOCK_TIMEOUT_SECONDS = 120.0
CRASH_AFTER_REFRESH = "after-token-refresh"


log = logging.getLogger(__name__)

_FILE_FORMAT_VERSION = 1


def _account(location_id: str, kind: str = "access_token") -> str:
    return f"{location_id}:{kind}"


def _client_account(client_id: str) -> str:
    return f"oauth-client:{client_id}"


def reconnect_hint(client_id: str | None = None) -> str:
    """The next step after OAuth credentials stopped working for good."""
    command = f"ghlsync connect --oauth --client-id {client_id or 'ID'}"
    return f"Authorize ghlsync anew: run ghlsync connect again ({command})."


# ---- secret stores -----------------------------------------------------------------------------


class SecretBackend(Protocol):
    """Where secrets are kept: get, set several (in order), delete."""

    kind: str

    def check(self) -> None:
        """Raise (exit 78) unless secrets can be stored here."""

    def get(self, account: str) -> str | None:
        """One secret, or None."""

    def set_many(self, items: Sequence[tuple[str, str]]) -> None:
        """Store several secrets, in the given order."""

    def delete_many(self, accounts: Sequence[str]) -> bool:
        """Forget secrets; True when at least one existed."""


class KeyringSecrets:
    """The OS keyring (Secret Service, macOS Keychain, Windows Credential Locker)."""

    kind = "keyring"

    def __init__(self, backend: keyring.backend.KeyringBackend | None = None) -> None:
        self._backend = backend

    def check(self) -> None:
        """NoKeyringError (exit 78) on a machine with no usable keyring backend."""
        self._usable_backend()

    def get(self, account: str) -> str | None:
        """One secret from the keyring."""
        backend = self._usable_backend()
        try:
            return backend.get_password(SERVICE, account)
        except keyring.errors.KeyringError as exc:
            raise NoKeyringError(f"The keyring could not be read: {type(exc).__name__}.") from None

    def set_many(self, items: Sequence[tuple[str, str]]) -> None:
        """Store secrets one by one, in order (the keyring has no transactions)."""
        backend = self._usable_backend()
        for account, secret in items:
            try:
                backend.set_password(SERVICE, account, secret)
            except keyring.errors.KeyringError as exc:
                raise NoKeyringError(
                    f"The keyring refused to store a secret: {type(exc).__name__}.",
                ) from None

    def delete_many(self, accounts: Sequence[str]) -> bool:
        """Forget secrets; False when none was stored (or there is no keyring at all)."""
        try:
            backend = self._usable_backend()
        except NoKeyringError:
            return False
        removed = False
        for account in accounts:
            try:
                backend.delete_password(SERVICE, account)
                removed = True
            except keyring.errors.PasswordDeleteError:
                pass
            except keyring.errors.KeyringError:
                return removed
        return removed

    def _usable_backend(self) -> keyring.backend.KeyringBackend:
        backend = self._backend or keyring.get_keyring()
        if not is_usable_backend(backend):
            raise NoKeyringError(
                f"No usable keyring backend on this machine ({type(backend).__name__}).",
            )
        return backend


class FileSecrets:
    """The opt-in secrets file: JSON, mode 0600, rewritten atomically (temp file, fsync, rename).

    Only used when ``GHLSYNC_SECRETS_FILE`` or the ``secrets_file`` setting names it. Writers take a
    lock beside it, so two processes saving different locations never lose each other's update;
    readers need none, since a rename replaces the whole file at once.
    """

    kind = "file"

    def __init__(self, path: Path) -> None:
        self.path = path.expanduser()

    def check(self) -> None:
        """ConfigError (exit 78) when the file is unreadable, malformed, readable by others, or
        could not be written."""
        self._read()
        directory = self.path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise self._error(f"Cannot create {directory}: {exc.strerror}.") from None
        if not os.access(directory, os.W_OK):
            raise self._error(f"The secrets file's directory {directory} is not writable.")

    def get(self, account: str) -> str | None:
        """One secret from the file."""
        value = self._read().get(account)
        return value if isinstance(value, str) else None

    def set_many(self, items: Sequence[tuple[str, str]]) -> None:
        """Store secrets with one atomic rewrite of the file."""
        with self._locked():
            secrets = self._read()
            secrets.update(items)
            self._write(secrets)

    def delete_many(self, accounts: Sequence[str]) -> bool:
        """Forget secrets with one atomic rewrite; False when none was stored."""
        with self._locked():
            secrets = self._read()
            found = [a for a in accounts if a in secrets]
            for account in found:
                del secrets[account]
            if found:
                self._write(secrets)
            return bool(found)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        lock = self.path.with_name(f".{self.path.name}.lock")
        with waiting_lock(lock, timeout=REFRESH_LOCK_TIMEOUT_SECONDS, what="the secrets file"):
            yield

    def _read(self) -> dict[str, str]:
        try:
            with self.path.open("rb") as handle:
                mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
                raw = handle.read()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise self._error(
                f"Cannot read the secrets file {self.path}: {exc.strerror}."
            ) from None
        if mode & 0o077:
            raise ConfigError(
                f"The secrets file {self.path} is readable by other users (mode {mode:o}).",
                hint=f"Run: chmod 600 {self.path}",
            )
        try:
            data = json.loads(raw)
            secrets = data["secrets"][SERVICE]
        except (ValueError, TypeError, KeyError):
            raise self._error(
                f"The secrets file {self.path} is not a ghlsync secrets file."
            ) from None
        if not isinstance(secrets, dict):
            raise self._error(f"The secrets file {self.path} is not a ghlsync secrets file.")
        return {str(k): str(v) for k, v in secrets.items()}

    def _write(self, secrets: Mapping[str, str]) -> None:
        document = {
            "version": _FILE_FORMAT_VERSION,
            "secrets": {SERVICE: dict(sorted(secrets.items()))},
        }
        data = json.dumps(document, indent=2).encode() + b"\n"
        directory = self.path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            # mkstemp creates the file 0600, so the secrets are never readable by others.
            fd, temp_name = tempfile.mkstemp(
                dir=directory, prefix=f".{self.path.name}.", suffix=".tmp"
            )
        except OSError as exc:
            raise self._error(
                f"Cannot write the secrets file {self.path}: {exc.strerror}."
            ) from None
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp_name, self.path)
            _fsync_directory(directory)
        except OSError as exc:
            Path(temp_name).unlink(missing_ok=True)
            raise self._error(
                f"Cannot write the secrets file {self.path}: {exc.strerror}."
            ) from None

    def _error(self, message: str) -> ConfigError:
        return ConfigError(
            message, hint=f"Check {SECRETS_FILE_ENV} (or the secrets_file setting) and the file."
        )


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a power cut must not bring back the old file)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


# ---- tokens ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OAuthTokens:
    """A location's OAuth token pair and its expiry (the secrets are kept out of ``repr``)."""

    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    expires_at: datetime
    expires_in: float
    client_id: str
    location_id: str | None = None
    scope: str = ""

    @property
    def expires_at_text(self) -> str:
        """``expires_at`` in ghlsync's stored timestamp form."""
        return format_time(self.expires_at)

    def is_refresh_due(self, now: datetime) -> bool:
        """True within the refresh margin of expiry (a tenth of the lifetime for short ones)."""
        margin = min(REFRESH_MARGIN_SECONDS, max(self.expires_in, 0.0) / 10)
        return now >= self.expires_at - timedelta(seconds=margin)

    def meta_json(self) -> str:
        """The non-secret part, as stored beside the tokens."""
        return json.dumps(
            {
                "client_id": self.client_id,
                "expires_at": self.expires_at_text,
                "expires_in": self.expires_in,
                "scope": self.scope,
            },
            sort_keys=True,
        )


class TokenStore:
    """Reads and writes a location's secrets: env and systemd overrides, then the secret store."""

    def __init__(
        self,
        *,
        backend: keyring.backend.KeyringBackend | None = None,
        environ: Mapping[str, str] | None = None,
        secrets_file: Path | None = None,
        lock_dir: Path | None = None,
    ) -> None:
        """``secrets_file`` opts in to the file store; with the keyring, refresh locks go in
        ``lock_dir`` (the CLI passes the database's directory)."""
        self._environ = environ if environ is not None else os.environ
        self.secrets: SecretBackend
        if secrets_file is not None:
            file_store = FileSecrets(secrets_file)
            self.secrets = file_store
            self._lock_dir = file_store.path.parent
        else:
            self.secrets = KeyringSecrets(backend)
            self._lock_dir = lock_dir or Path(platformdirs.user_state_dir("ghlsync"))

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

    def static_token(self) -> str | None:
        """A token from the environment or a systemd credential; it overrides stored ones."""
        return self.env_token or self.credential_token()

    def source(self, location_id: str) -> str:
        """Where the token for this location comes from: env, credential, keyring or file."""
        if self.env_token:
            return "env"
        if self.credential_token():
            return "credential"
        return self.secrets.kind

    def check_writable(self) -> None:
        """Fail now (exit 78) if secrets could not be stored, before anything is authorized."""
        self.secrets.check()

    def access_token(self, location_id: str) -> str:
        """The token to use for this location, or AuthError (exit 77) when there is none."""
        token = self.static_token()
        if token:
            return token
        stored = self.secrets.get(_account(location_id))
        if not stored:
            raise AuthError(f"No token is stored for location {location_id}.")
        return stored

    def save_access_token(self, location_id: str, token: str) -> None:
        """Store a private-integration token."""
        self.secrets.set_many([(_account(location_id), token)])

    def load_oauth(self, location_id: str) -> OAuthTokens | None:
        """The stored OAuth pair of a location, or None when it has none (or only part of one)."""
        refresh = self.secrets.get(_account(location_id, "refresh_token"))
        access = self.secrets.get(_account(location_id, "access_token"))
        meta_text = self.secrets.get(_account(location_id, "oauth"))
        if not refresh or not access or not meta_text:
            return None
        try:
            meta = json.loads(meta_text)
            expires_at = parse_time(str(meta["expires_at"]))
            client_id = str(meta["client_id"])
            expires_in = float(meta.get("expires_in") or 0)
        except (ValueError, TypeError, KeyError):
            return None
        return OAuthTokens(
            access_token=access,
            refresh_token=refresh,
            expires_at=expires_at or datetime.fromtimestamp(0, UTC),
            expires_in=expires_in,
            client_id=client_id,
            location_id=location_id,
            scope=str(meta.get("scope") or ""),
        )

    def save_oauth(self, location_id: str, tokens: OAuthTokens) -> None:
        """Store an OAuth pair: refresh token first, so a crash midway never loses the live one.

        (A crash after the refresh token but before the access token leaves the old access token
        and the new refresh token: the next 401 or expiry refreshes with the new one.)
        """
        self.secrets.set_many(
            [
                (_account(location_id, "refresh_token"), tokens.refresh_token),
                (_account(location_id, "access_token"), tokens.access_token),
                (_account(location_id, "oauth"), tokens.meta_json()),
            ]
        )

    def client_secret(self, client_id: str) -> str | None:
        """An OAuth app's stored client secret."""
        return self.secrets.get(_client_account(client_id))

    def save_client_secret(self, client_id: str, secret: str) -> None:
        """Remember an OAuth app's client secret (for refreshes and later connects)."""
        self.secrets.set_many([(_client_account(client_id), secret)])

    def delete(self, location_id: str) -> bool:
        """Forget every secret of a location; False when nothing was stored."""
        kinds = ("access_token", "refresh_token", "oauth")
        return self.secrets.delete_many([_account(location_id, kind) for kind in kinds])

    @contextmanager
    def refresh_lock(self, location_id: str) -> Iterator[None]:
        """Hold the cross-process lock for rotating one location's OAuth tokens."""
        digest = _digest(location_id)
        path = self._lock_dir / f".ghlsync-oauth-{digest}.lock"
        what = f"the OAuth tokens of location {location_id}"
        with waiting_lock(path, timeout=REFRESH_LOCK_TIMEOUT_SECONDS, what=what):
            yield


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---- the token endpoint ------------------------------------------------------------------------


def token_request(
    token_url: str, form: Mapping[str, str], *, timeout: Mapping[str, Any] | None = None
) -> httpx.Request:
    """A ``POST /oauth/token`` request, form-encoded as GHL's OAuth spec requires."""
    extensions = {"timeout": dict(timeout)} if timeout is not None else {}
    return httpx.Request(
        "POST",
        token_url,
        data=dict(form),
        headers={"Accept": "application/json", "User-Agent": f"ghlsync/{__version__}"},
        extensions=extensions,
    )


def parse_token_response(
    response: httpx.Response,
    *,
    client_id: str,
    grant: str,
    now: datetime,
    redact: Sequence[str] = (),
) -> OAuthTokens:
    """The token pair from a token-endpoint answer, or the error that says what to do next."""
    status = response.status_code
    if 200 <= status < 300:
        return _tokens_from_body(response, client_id=client_id, now=now)
    message = _token_error_message(response, redact)
    what = "refresh the access token" if grant == "refresh_token" else "issue tokens"
    if status == 429 or status >= 500:
        raise UnavailableError(
            f"GHL's token endpoint could not {what} ({status}): {message}",
            status=status,
            method="POST",
            path=TOKEN_PATH,
        )
    if "location is not active" in message.lower():
        # GHL keeps the refresh token valid while a location is paused: no reconnect needed.
        raise TryAgainError(
            f"GHL would not {what}: {message}",
            hint="The location is paused or its subscription lapsed in GHL; once it is active "
            "again, rerun (no reconnect is needed).",
        )
    if status in (401, 403):
        raise AuthError(
            f"GHL rejected the OAuth client credentials ({status}): {message}",
            hint=f"Check the client id and secret: ghlsync connect --oauth --client-id "
            f"{client_id} --client-secret-stdin",
        )
    if grant == "refresh_token":
        raise AuthError(
            f"GHL refused to refresh the access token ({status}): {message}. The refresh token "
            "was already used or was revoked.",
            hint=reconnect_hint(client_id),
        )
    raise AuthError(
        f"GHL refused the authorization code ({status}): {message}",
        hint=reconnect_hint(client_id),
    )


def _tokens_from_body(response: httpx.Response, *, client_id: str, now: datetime) -> OAuthTokens:
    try:
        body = TokenResponse.model_validate_json(response.content)
    except pydantic.ValidationError:
        body = None
    if body is None or not body.refresh_token or not body.access_token:
        # ``from None`` and no body in the message: it would hold the tokens.
        raise MalformedResponseError(
            f"GHL's token endpoint answered {response.status_code} without a token pair.",
            status=response.status_code,
            method="POST",
            path=TOKEN_PATH,
        ) from None
    expires_in = float(body.expires_in if body.expires_in is not None else 86399)
    expires_at = now + timedelta(seconds=expires_in)
    return OAuthTokens(
        access_token=body.access_token,
        refresh_token=body.refresh_token,
        # Milliseconds, as stored: a pair read back compares equal to the one saved.
        expires_at=expires_at.replace(microsecond=expires_at.microsecond // 1000 * 1000),
        expires_in=expires_in,
        client_id=client_id,
        location_id=body.locationId,
        scope=body.scope or "",
    )


def _token_error_message(response: httpx.Response, redact: Sequence[str]) -> str:
    """GHL's words for a token-endpoint error: RFC 6749 ``error_description`` or ``message``."""
    try:
        body = response.json()
    except ValueError:
        body = None
    parts: list[str] = []
    if isinstance(body, dict):
        for key in ("message", "error_description"):
            value = body.get(key)
            if isinstance(value, list):
                value = "; ".join(str(v) for v in value)
            if isinstance(value, str) and value and value not in parts:
                parts.append(value)
        if not parts and isinstance(body.get("error"), str):
            parts.append(body["error"])
    text = "; ".join(parts)[:300] or response.reason_phrase or "no message"
    for secret in redact:
        if len(secret) >= 8:
            text = text.replace(secret, "[redacted]")
    return text


def exchange_code(
    http: httpx.Client,
    *,
    token_url: str,
    client_id: str,
    client_secret: str,
    code: str,
    redirect_uri: str,
    now: Callable[[], datetime] | None = None,
) -> OAuthTokens:
    """Trade an authorization code for a location's token pair (``authorization_code`` grant)."""
    form = {
        "client_id": client_id,
        "client_secret": client_secret,
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "user_type": "Location",
    }
    request = token_request(token_url, form, timeout=http.timeout.as_dict())
    try:
        response = http.send(request)
    except httpx.TransportError as exc:
        raise UnavailableError(
            f"GHL's token endpoint could not be reached ({type(exc).__name__}).",
            method="POST",
            path=TOKEN_PATH,
        ) from None
    clock = now or _utc_now
    return parse_token_response(
        response,
        client_id=client_id,
        grant="authorization_code",
        now=clock(),
        redact=(client_secret, code),
    )


def _utc_now() -> datetime:
    return datetime.now(UTC)


# ---- httpx.Auth ----------------------------------------------------------------------------------


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


class OAuthAuth(httpx.Auth):
    """OAuth bearer tokens that refresh themselves: before expiry, and once after a 401.

    Each request refreshes at most once. A 401 right after a refresh (or after switching to a pair
    another process stored) is an AuthError, never another round. The refresh request travels
    through the same client (and transport) as the API request it serves.
    """

    requires_response_body = True

    def __init__(
        self,
        *,
        location_id: str,
        tokens: TokenStore,
        token_url: str,
        on_refresh: Callable[[OAuthTokens], None] | None = None,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.location_id = location_id
        self.refresh_count = 0  # refreshes this object made (tests and reports)
        self._tokens = tokens
        self._token_url = token_url
        self._on_refresh = on_refresh
        self._clock = clock
        self._current: OAuthTokens | None = None

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Authorize ``request``, refreshing first when due and once more after a 401."""
        current = self._current or self._load()
        has_refreshed = False
        if current.is_refresh_due(self._clock()):
            current, has_refreshed = yield from self._refresh(request, stale=current)
        _authorize(request, current)
        response = yield request
        if response.status_code != 401:
            return
        if has_refreshed:
            raise self._rejected_after_refresh(current)
        current, has_refreshed = yield from self._refresh(request, stale=current, rejected=True)
        _authorize(request, current)
        response = yield request
        if response.status_code == 401:
            raise self._rejected_after_refresh(current)

    def _load(self) -> OAuthTokens:
        stored = self._tokens.load_oauth(self.location_id)
        if stored is None:
            raise AuthError(
                f"No OAuth tokens are stored for location {self.location_id}.",
                hint=reconnect_hint(),
            )
        self._current = stored
        return stored

    def _refresh(
        self, request: httpx.Request, *, stale: OAuthTokens, rejected: bool = False
    ) -> Generator[httpx.Request, httpx.Response, tuple[OAuthTokens, bool]]:
        """Rotate the pair under the lock; returns (pair to use, whether this call refreshed)."""
        with self._tokens.refresh_lock(self.location_id):
            stored = self._load()
            # Someone else (another process, or another client here) rotated the pair while we
            # waited or since we loaded it: theirs is the live one, and ours is spent.
            is_newer = not hmac.compare_digest(stored.access_token, stale.access_token)
            if is_newer and not stored.is_refresh_due(self._clock()):
                log.info(
                    "Location %s: another process already refreshed the access token; using it.",
                    self.location_id,
                )
                return stored, False
            client_secret = self._tokens.client_secret(stored.client_id)
            if not client_secret:
                raise AuthError(
                    f"The client secret of OAuth app {stored.client_id} is not stored, so the "
                    f"access token of location {self.location_id} cannot be refreshed.",
                    hint=f"Run: ghlsync connect --oauth --client-id {stored.client_id} "
                    "--client-secret-stdin",
                )
            form = {
                "client_id": stored.client_id,
                "client_secret": client_secret,
                "grant_type": "refresh_token",
                "refresh_token": stored.refresh_token,
                "user_type": "Location",
            }
            timeout = request.extensions.get("timeout")
            response = yield token_request(self._token_url, form, timeout=timeout)
            fresh = parse_token_response(
                response,
                client_id=stored.client_id,
                grant="refresh_token",
                now=self._clock(),
                redact=(client_secret, stored.refresh_token, stored.access_token),
            )
            # The old refresh token is spent from here on: dying before the save below means
            # the next run must reconnect (exit 77).
            crash_point(CRASH_AFTER_REFRESH)
            self._tokens.save_oauth(self.location_id, fresh)
            self._current = fresh
            self.refresh_count += 1
        log.info(
            "Location %s: refreshed the access token (%s); it expires at %s.",
            self.location_id,
            "after a 401" if rejected else "before expiry",
            fresh.expires_at_text,
        )
        if self._on_refresh is not None:
            self._on_refresh(fresh)
        return fresh, True

    def _rejected_after_refresh(self, current: OAuthTokens) -> AuthError:
        return AuthError(
            f"GHL rejected the access token of location {self.location_id} right after it was "
            "refreshed (the app may have been uninstalled, or the location removed).",
            hint=reconnect_hint(current.client_id),
        )

    def __repr__(self) -> str:
        return f"OAuthAuth(location_id={self.location_id!r}, <redacted>)"


def _authorize(request: httpx.Request, tokens: OAuthTokens) -> None:
    request.headers["Authorization"] = f"Bearer {tokens.access_token}"
