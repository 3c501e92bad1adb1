"""Every failure ghlsync reports, each carrying its exit code and a hint for the next step.

The exit codes are the public contract (sysexits), so a cron user can tell "fix your config" (78)
from "retry later" (75, 69) from "reconnect" (77) from "bad input" (65)::

    GhlsyncError (1)
    ├── ConfigError (78)                 no location, bad option, unusable database
    │   ├── NoKeyringError (78)          no OS keyring backend on this machine
    │   └── SchemaTooNewError (78)       database written by a newer ghlsync
    ├── InputError (65)                  malformed file/webhook, invalid email/phone
    │   └── ContactNotFoundError (65)    no local contact with that id
    ├── TryAgainError (75)               nothing is wrong, but not now
    │   ├── LockedError (75)             another run holds this location's lock
    │   ├── PushQueuedError (75)         local changes kept, not yet in GHL
    │   └── MassDeleteRefusedError (75)  a sweep would soft-delete too many contacts
    ├── AuthError (77)                   token rejected or refresh failed: reconnect
    ├── StorageError (75)                disk full, database locked too long
    │   └── UnusableDatabaseError (78)   not a database, damaged, or read-only: retrying won't help
    └── ApiError (69)                    GHL answered with an error we cannot fix by retrying
        ├── NotFoundError (69)           404 / "not found"
        ├── ValidationError (69)         400/422 with GHL's own messages
        ├── UnavailableError (69)        5xx, network errors or 429 after every retry
        └── MalformedResponseError (69)  a body that is not the documented shape

Exception classes carry typed, keyword-built attributes; the CLI prints ``message`` and ``hint``.
"""

from __future__ import annotations

EX_OK = 0
EX_SOFTWARE = 1
EX_USAGE = 2
EX_DATAERR = 65
EX_UNAVAILABLE = 69
EX_TEMPFAIL = 75
EX_NOPERM = 77
EX_CONFIG = 78


class GhlsyncError(Exception):
    """Base of every error ghlsync raises on purpose."""

    exit_code: int = EX_SOFTWARE
    default_hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint

    def __str__(self) -> str:
        return self.message


class ConfigError(GhlsyncError):
    """Configuration is missing or wrong; the user must change a setting."""

    exit_code = EX_CONFIG


class NoKeyringError(ConfigError):
    """No usable OS keyring backend: secrets cannot be stored here."""

    default_hint = (
        "Set GHLSYNC_TOKEN to a token (static; nothing is stored); or, under systemd, pass a "
        "static token with LoadCredential=ghlsync-token:/path (read from "
        "$CREDENTIALS_DIRECTORY/ghlsync-token); or, for OAuth's rotating tokens, opt in to a "
        "secrets file: GHLSYNC_SECRETS_FILE=/path (JSON, created 0600); or install a keyring "
        "backend such as Secret Service."
    )


class SchemaTooNewError(ConfigError):
    """The database was migrated by a newer ghlsync than this one."""

    def __init__(self, message: str, *, unknown_migrations: list[str]) -> None:
        super().__init__(message, hint="Upgrade ghlsync, or point --db at another file.")
        self.unknown_migrations = unknown_migrations


class InputError(GhlsyncError):
    """Input data (a file, a webhook body, an option value) is malformed."""

    exit_code = EX_DATAERR


class ContactNotFoundError(InputError):
    """No local contact has that id."""

    def __init__(self, contact_id: str) -> None:
        super().__init__(
            f"No contact with id {contact_id!r}.",
            hint="List ids with: ghlsync contacts list",
        )
        self.contact_id = contact_id


class TryAgainError(GhlsyncError):
    """Nothing is broken, but the work could not be done now; a later run will do it."""

    exit_code = EX_TEMPFAIL


class LockedError(TryAgainError):
    """Another ghlsync run holds this location's lock."""

    def __init__(self, location_id: str, *, lock_path: str) -> None:
        super().__init__(
            f"Another ghlsync run is working on location {location_id}.",
            hint="It will finish on its own; this run can simply be retried later.",
        )
        self.location_id = location_id
        self.lock_path = lock_path


class PushQueuedError(TryAgainError):
    """Local changes were saved but could not reach GHL; they stay queued."""

    def __init__(self, message: str, *, queued: int, cause: str | None = None) -> None:
        super().__init__(
            message, hint="They will be sent by: ghlsync push --pending (or the next reconcile)."
        )
        self.queued = queued
        self.cause = cause


class MassDeleteRefusedError(TryAgainError):
    """A full sweep would mark more contacts inactive than the guard allows."""

    def __init__(self, *, would_delete: int, limit: int, total: int) -> None:
        super().__init__(
            f"Refusing to mark {would_delete} of {total} contacts inactive (the limit is {limit}).",
            hint="Check the location and token; if this is expected, rerun with --force "
            "or raise --max-delete.",
        )
        self.would_delete = would_delete
        self.limit = limit
        self.total = total


class AuthError(GhlsyncError):
    """GHL rejected the credentials, or they could not be refreshed."""

    exit_code = EX_NOPERM
    default_hint = "Run: ghlsync connect --location-id ID --token-stdin (or set GHLSYNC_TOKEN)."


class StorageError(GhlsyncError):
    """The SQLite file could not be written (disk full, read-only, locked too long)."""

    exit_code = EX_TEMPFAIL

    def __init__(self, message: str, *, path: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.path = path


class UnusableDatabaseError(StorageError):
    """The file is not a usable database (not SQLite, damaged, read-only): fix the file or --db.

    A configuration error, not "try again later": a timer treats 75 as fine-until-next-time, and
    this file will not fix itself.
    """

    exit_code = EX_CONFIG


class ApiError(GhlsyncError):
    """GHL answered with an error status that retrying will not fix."""

    exit_code = EX_UNAVAILABLE

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        method: str = "",
        path: str = "",
        request_id: str | None = None,
        details: list[str] | None = None,
        body: object = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.method = method
        self.path = path
        self.request_id = request_id
        self.details = details or []
        self.body = body

    @property
    def is_permanent(self) -> bool:
        """True for client errors that the same request will always get (4xx but 408/429)."""
        return (
            self.status is not None and 400 <= self.status < 500 and self.status not in (408, 429)
        )


class NotFoundError(ApiError):
    """The GHL resource does not exist (any more)."""


class ValidationError(ApiError):
    """GHL refused the request body (400/422), with its own messages in ``details``."""


class UnavailableError(ApiError):
    """GHL could not be reached or kept failing (5xx, network, 429) after every retry."""

    default_hint = "GHL or the network is unavailable; rerun later (cron will)."


class MalformedResponseError(ApiError):
    """GHL answered 2xx with a body that is not the documented shape."""

    default_hint = (
        "Nothing from this response was saved; rerun later, and report it if it persists."
    )
