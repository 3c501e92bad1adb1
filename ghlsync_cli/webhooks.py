"""Webhook bodies: verify their signature, parse them into events, split saved files into bodies.

Everything here works on the raw bytes GHL sent, because signatures cover those exact bytes. A body
is refused before parsing when it is too big or nested too deep, so hostile input costs little.

Signatures: ``X-GHL-Signature`` is Ed25519 over the raw body (GHL's current scheme); the legacy
``X-WH-Signature`` (RSA-SHA256, PKCS#1 v1.5) is checked only when the first header is absent.
GHL's published public keys ship in ``ghlsync_cli/keys/``; ``--public-key`` adds another (the
sandbox signs with its own test key).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from ghlsync_cli import jsontext
from ghlsync_cli.errors import InputError
from ghlsync_cli.timeutil import normalize_time, parse_time

MAX_BODY_BYTES = 1024 * 1024
MAX_DEPTH = 64
TIMESTAMP_TOLERANCE_SECONDS = 300

CONTACT_EVENTS = frozenset(
    {"ContactCreate", "ContactUpdate", "ContactDndUpdate", "ContactTagUpdate"}
)
DELETE_EVENTS = frozenset({"ContactDelete"})
INSTALL_EVENTS = frozenset({"INSTALL", "AppInstall"})
UNINSTALL_EVENTS = frozenset({"UNINSTALL", "AppUninstall"})
# Keys of a webhook body that describe the event, not the contact.
EVENT_KEYS = frozenset({"type", "webhookId", "timestamp", "appId", "companyId", "versionId"})

GHL_ED25519_KEY = "ghl-webhook-x-ghl-signature-ed25519-public.pem"
GHL_RSA_KEY = "ghl-webhook-x-wh-signature-rsa-public.pem"
SIGNATURE_HEADER = "x-ghl-signature"
LEGACY_SIGNATURE_HEADER = "x-wh-signature"
# Headers worth keeping with a stored body: what replay --verify and debugging need, no secrets.
KEPT_HEADERS = frozenset(
    {SIGNATURE_HEADER, LEGACY_SIGNATURE_HEADER, "content-type", "user-agent", "x-request-id"}
)


# A JSON string: escapes skip the next byte; one left open runs to the end of the input. It
# always matches from a quote, so scanning stays linear even for hostile input.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
_BRACKET_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}
_NOT_BRACKETS = bytes(b for b in range(256) if b not in _BRACKET_STEP)
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in _BRACKET_STEP and b != ord('"'))


class SignatureError(InputError):
    """A webhook whose signature is missing, malformed or does not match a trusted key."""


class StaleEventError(InputError):
    """A webhook whose ``timestamp`` is too far from now (a replayed or delayed body)."""


class WebhookEvent(NamedTuple):
    """One parsed webhook body (made by ``parse_event``).

    (A named tuple: a replay makes one per body, several times faster than a frozen dataclass.)
    """

    type: str
    body: dict[str, Any]
    raw: bytes
    location_id: str | None
    webhook_id: str | None
    timestamp: str | None
    headers: dict[str, str]
    # ``webhookId`` when GHL sent one, else a hash of the body: what the inbox tells bodies by.
    dedup_key: str

    @property
    def contact_payload(self) -> dict[str, Any]:
        """The body without the event's own keys: a GHL contact payload."""
        payload = dict(self.body)
        for key in EVENT_KEYS:
            payload.pop(key, None)
        return payload

    @property
    def event_time(self) -> str | None:
        """When the contact changed: ``dateUpdated`` if sent, else the event ``timestamp``."""
        updated = self.body.get("dateUpdated")
        if updated is None:  # (most bodies: nothing to read)
            return self.timestamp
        return normalize_time(updated) or self.timestamp


def check_depth(raw: bytes, limit: int = MAX_DEPTH) -> None:
    """Refuse JSON nested deeper than ``limit`` before the parser recurses into it.

    Brackets inside strings do not count. The work is done by C-level scans (a byte loop in
    Python would cost more than parsing a whole file of bodies): nesting can never exceed the
    number of opening brackets, which settles nearly every body at once; otherwise strings are
    cut out and the deepest running sum over the remaining brackets is taken.
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return
    if b"\\" in raw:
        # A pair of backslashes is an escaped backslash inside a string and plain text outside:
        # dropping every pair moves no string's bounds. A single backslash left over matters
        # only before a quote (an escaped quote).
        raw = raw.replace(b"\\\\", b"")
    if b'\\"' in raw:
        outside = _JSON_STRING.sub(b"", raw)
    else:
        # No escaped quote: quotes simply alternate between opening and closing a string. Keep
        # only quotes and brackets, and drop bracket-free strings ("" pairs keep the parity).
        structure = raw.translate(None, _NOT_STRUCTURE).replace(b'""', b"")
        outside = b"".join(structure.split(b'"')[0::2])
    brackets = outside.translate(None, _NOT_BRACKETS)
    if max(itertools.accumulate(map(_BRACKET_STEP.__getitem__, brackets)), default=0) > limit:
        raise InputError(f"Webhook body is nested deeper than {limit} levels.")


def parse_event(
    raw: bytes, headers: Mapping[str, str] | None = None, *, document: Any = None
) -> WebhookEvent:
    """Parse one webhook body; InputError (exit 65) for anything that is not a GHL event.

    ``document``: the body as already parsed from exactly ``raw`` (``SavedBody.document``), so
    it is not parsed a second time (nor decoded, nor checked for depth: ``split_saved`` did
    both); the other checks on ``raw`` still run.
    """
    if len(raw) > MAX_BODY_BYTES:
        raise InputError(f"Webhook body is larger than {MAX_BODY_BYTES} bytes.")
    text = None  # the body's text, when it is still to be parsed
    if document is None:  # not parsed yet (or JSON null, which parsing again turns away below)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError("Webhook body is not valid UTF-8.") from None
    body = document
    if text is not None:
        check_depth(raw)
        try:
            body = json.loads(text)
        except (ValueError, RecursionError) as exc:
            # ValueError covers JSONDecodeError and integers longer than Python converts.
            raise InputError(f"Webhook body is not valid JSON: {exc}.") from None
    if not isinstance(body, dict):
        raise InputError("Webhook body is not a JSON object.")
    kind = body.get("type")
    if not isinstance(kind, str) or not kind.strip():
        raise InputError("Webhook body has no event type.", hint="GHL bodies carry a 'type' key.")
    location = body.get("locationId")
    webhook_id = body.get("webhookId")
    stamp = body.get("timestamp")
    if not isinstance(webhook_id, str) or not webhook_id:
        webhook_id = None
    # (arguments by position: a named tuple given keywords builds a dict of them first, and a
    # replay makes one event per body)
    return WebhookEvent(
        kind,
        body,
        raw,
        location if isinstance(location, str) and location else None,
        webhook_id,
        normalize_time(stamp) if isinstance(stamp, (str, int, float)) else None,
        kept_headers(headers),
        f"webhook:{webhook_id}" if webhook_id else "sha256:" + hashlib.sha256(raw).hexdigest(),
    )


def kept_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """The headers stored with a body (lower-cased names)."""
    if not headers:  # a replayed bare body (most of a replay's: no filtering)
        return {}
    return {k.lower(): v for k, v in headers.items() if k.lower() in KEPT_HEADERS}


def check_timestamp(event: WebhookEvent, now: datetime | None = None) -> None:
    """Refuse an event whose ``timestamp`` is more than 5 minutes from now (absent is allowed)."""
    if "timestamp" not in event.body:
        return
    moment = parse_time(event.body["timestamp"]) if event.timestamp else None
    if moment is None:
        raise StaleEventError("Webhook timestamp is not a valid time.")
    now = now or datetime.now(UTC)
    if abs((now - moment).total_seconds()) > TIMESTAMP_TOLERANCE_SECONDS:
        raise StaleEventError(
            f"Webhook timestamp {event.timestamp} is more than "
            f"{TIMESTAMP_TOLERANCE_SECONDS // 60} minutes from now."
        )


class SignatureVerifier:
    """Checks webhook signatures against trusted public keys."""

    def __init__(self, ed25519: Iterable[Ed25519PublicKey], rsa: Iterable[RSAPublicKey]) -> None:
        self.ed25519 = list(ed25519)
        self.rsa = list(rsa)

    @classmethod
    def load(cls, extra_keys: Iterable[Path] = ()) -> SignatureVerifier:
        """GHL's published keys plus any PEM files given (Ed25519 or RSA, told apart by type)."""
        pems = [
            resources.files("ghlsync_cli").joinpath("keys", name).read_bytes()
            for name in (GHL_ED25519_KEY, GHL_RSA_KEY)
        ]
        for path in extra_keys:
            try:
                pems.append(Path(path).read_bytes())
            except OSError as exc:
                raise InputError(f"Cannot read public key {path}: {exc.strerror}.") from None
        ed25519: list[Ed25519PublicKey] = []
        rsa: list[RSAPublicKey] = []
        for pem in pems:
            try:
                key = serialization.load_pem_public_key(pem)
            except ValueError:
                raise InputError("A public key file is not a PEM public key.") from None
            if isinstance(key, Ed25519PublicKey):
                ed25519.append(key)
            elif isinstance(key, RSAPublicKey):
                rsa.append(key)
            else:
                raise InputError(f"Unsupported public key type {type(key).__name__}.")
        return cls(ed25519, rsa)

    def verify(self, raw: bytes, headers: Mapping[str, str]) -> str:
        """The scheme that verified (``ed25519`` or ``rsa``); SignatureError otherwise."""
        lowered = {k.lower(): v for k, v in headers.items()}
        if SIGNATURE_HEADER in lowered:
            signature = _decode_signature(lowered[SIGNATURE_HEADER])
            for ed_key in self.ed25519:
                try:
                    ed_key.verify(signature, raw)
                    return "ed25519"
                except InvalidSignature:
                    continue
            raise SignatureError("X-GHL-Signature does not match the body.")
        if LEGACY_SIGNATURE_HEADER in lowered:
            signature = _decode_signature(lowered[LEGACY_SIGNATURE_HEADER])
            for rsa_key in self.rsa:
                try:
                    rsa_key.verify(signature, raw, padding.PKCS1v15(), hashes.SHA256())
                    return "rsa"
                except InvalidSignature:
                    continue
            raise SignatureError("X-WH-Signature does not match the body.")
        raise SignatureError("The webhook carries no X-GHL-Signature or X-WH-Signature header.")


def _decode_signature(value: str) -> bytes:
    try:
        return base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("The signature header is not base64.") from None


class SavedBody(NamedTuple):
    """A body read from a replay file, with the headers saved beside it (if any).

    (A named tuple: a replay makes one per body, and builds it several times faster than a
    frozen dataclass.)
    """

    raw: bytes
    headers: dict[str, str]
    # The body as parsed while splitting the file, when that parse was of exactly ``raw`` (a
    # bare body on its own line, or a file holding one body; its depth checked too):
    # ``parse_event`` reuses it.
    document: Any = None


def split_saved(data: bytes) -> Iterator[SavedBody]:
    """Bodies in a saved file: one JSON object, a JSON array, or JSON lines.

    An item may be a bare body, or ``{"headers": {...}, "body": "<raw body text>"}`` so signatures
    (which cover exact bytes) can be checked again with ``replay-webhook --verify``.

    The bodies come one at a time (an error in the file is raised when it is reached), so a
    caller that keeps only what it makes of each one never holds them all: a replay of 100,000
    bodies that kept every ``SavedBody`` until the end would leave 100,000 small holes spread over
    its heap when they were freed, and every allocation after that would be slower (a cache miss
    each instead of a neighbouring block).
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("The file is not valid UTF-8.") from None
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        yield from _saved_lines(data)  # (each line's depth is checked before it is parsed)
        return
    # (after parsing: a file of lines fails to parse at once, and checking a whole file of
    # bodies would cost more than parsing them; a parse nested too deep raised RecursionError)
    check_depth(data)
    if isinstance(document, list):
        yield from (_saved(item, None) for item in document)
        return
    yield _saved(document, data.strip())


def _saved_lines(data: bytes) -> Iterator[SavedBody]:
    """``split_saved`` of a file of JSON lines."""
    found = False
    # Integers beyond 64 bits (see jsontext.loads) looked for once in the whole file, not line by
    # line: when the file holds none, no line does.
    long_integers = None if jsontext.may_hold_long_integer(data) else False
    # Lines end only at \n, \r or \r\n: a JSON string may hold U+2028 or U+0085 as is, which
    # str.splitlines would also cut at. (Without a \r, a split at each \n gives the same lines,
    # but for an empty last one, and is quicker.)
    lines = data.split(b"\n") if b"\r" not in data else data.splitlines()
    for number, line in enumerate(lines, start=1):
        if not line or line.isspace():
            continue
        check_depth(line)
        try:
            item = jsontext.loads(line, long_integers=long_integers)
        except (ValueError, RecursionError) as exc:
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            raise InputError(f"Line {number} is not valid JSON: {reason}.") from None
        found = True
        yield _saved(item, line)
    if not found:
        raise InputError("The file holds no JSON.")


def _saved(item: object, raw: bytes | None) -> SavedBody:
    if isinstance(item, dict) and "body" in item and "type" not in item:
        headers = item.get("headers") or {}
        body = item["body"]
        if not isinstance(headers, dict):
            raise InputError("Saved 'headers' must be an object.")
        if isinstance(body, str):
            return SavedBody(body.encode(), {str(k): str(v) for k, v in headers.items()})
        return SavedBody(_compact(body), {str(k): str(v) for k, v in headers.items()})
    if raw is not None:
        return SavedBody(raw, {}, item)  # (by position: see parse_event)
    return SavedBody(_compact(item), {})


def _compact(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
