"""What the receiver refuses, with which status, and that a refused body leaves no trace."""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ghlsync_cli.sandbox import WEBHOOK_PUBLIC_KEY_PATH
from ghlsync_cli.webhooks import SignatureVerifier
from tests.webhooks.conftest import Receiver, StartReceiver
from tests.webhooks.support import (
    contact,
    encode,
    event,
    iso_now,
    rows,
    signed,
    wait_for,
    wait_processed,
)

MIB = 1024 * 1024


@dataclass(frozen=True)
class Delivery:
    """A request to send: its raw body and headers."""

    raw: bytes | Callable[[], Iterator[bytes]]
    headers: dict[str, str]


def _signed(raw: bytes) -> Delivery:
    return Delivery(raw, signed(raw))


def _good() -> bytes:
    return encode(event(firstName="Eve", email="eve@example.com"))


def _tampered() -> Delivery:
    raw = _good()
    return Delivery(raw.replace(b"Eve", b"Mallory"), signed(raw))


def _wrong_key() -> Delivery:
    raw = _good()
    signature = base64.b64encode(Ed25519PrivateKey.generate().sign(raw)).decode()
    return Delivery(raw, {"X-GHL-Signature": signature})


def _chunked_2mib() -> Delivery:
    def chunks() -> Iterator[bytes]:
        yield b'{"type": "ContactCreate", "pad": "'
        for _ in range(32):
            yield b"x" * 65536
        yield b'"}'

    return Delivery(chunks, {"X-GHL-Signature": "c2lnbmF0dXJl"})


def _padded(size: int) -> bytes:
    body = event(firstName="Big", pad="")
    raw = encode(body)
    return encode({**body, "pad": "x" * (size - len(raw))})


REJECTIONS: dict[str, tuple[Callable[[], Delivery], int]] = {
    "tampered body": (_tampered, 401),
    "signed with another key": (_wrong_key, 401),
    "no signature": (lambda: Delivery(_good(), {"Content-Type": "application/json"}), 401),
    "signature not base64": (lambda: Delivery(_good(), {"X-GHL-Signature": "%%%"}), 401),
    "empty signature": (lambda: Delivery(_good(), {"X-GHL-Signature": ""}), 401),
    "timestamp 6 minutes old": (
        lambda: _signed(encode(event(timestamp=iso_now(seconds=-360)))),
        401,
    ),
    "timestamp 6 minutes ahead": (
        lambda: _signed(encode(event(timestamp=iso_now(seconds=360)))),
        401,
    ),
    "timestamp not a time": (lambda: _signed(encode(event(timestamp="yesterday"))), 401),
    "2 MiB body": (lambda: _signed(_padded(2 * MIB)), 413),
    "2 MiB body without Content-Length": (_chunked_2mib, 413),
    "5,000-deep nesting": (
        lambda: _signed(b'{"type": "ContactCreate", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
        400,
    ),
    "invalid UTF-8": (
        lambda: _signed(encode(event(firstName="X")).replace(b'"X"', b'"\xff\xfe"')),
        400,
    ),
    "not JSON": (lambda: _signed(_good()[:-1]), 400),
    "empty body": (lambda: _signed(b""), 400),
    "a JSON array": (lambda: _signed(encode([event()])), 400),
    "no type": (lambda: _signed(encode({k: v for k, v in event().items() if k != "type"})), 400),
    "blank type": (lambda: _signed(encode({**event(), "type": " "})), 400),
    # Bodies that pass the size and depth checks but used to escape the parser's error handling.
    "a 5,000-digit number": (
        lambda: _signed(b'{"type": "ContactCreate", "n": ' + b"7" * 5000 + b"}"),
        400,
    ),
    "timestamp NaN": (lambda: _signed(b'{"type": "ContactCreate", "timestamp": NaN}'), 401),
    "timestamp epoch ms out of range": (
        lambda: _signed(b'{"type": "ContactCreate", "timestamp": 100000000000000000000}'),
        401,
    ),
    "timestamp year 1 with an offset": (
        lambda: _signed(encode(event(timestamp="0001-01-01T00:00:00+01:00"))),
        401,
    ),
}


def _assert_nothing_stored(db: Path) -> None:
    assert rows(db, "inbox") == []
    assert rows(db, "contacts") == []


@pytest.mark.parametrize("case", list(REJECTIONS))
def test_rejected_with_the_right_status_and_nothing_stored(receiver: Receiver, case: str) -> None:
    build, status = REJECTIONS[case]
    delivery = build()
    raw = delivery.raw() if callable(delivery.raw) else delivery.raw
    response = receiver.http.post("/webhooks/ghl", content=raw, headers=delivery.headers)

    assert response.status_code == status, response.text
    assert response.json()["status"] == "rejected"
    assert receiver.http.get("/healthz").json() == {"status": "ok", "inbox_backlog": 0}
    _assert_nothing_stored(receiver.db)


def test_a_body_of_exactly_one_mib_is_accepted(receiver: Receiver) -> None:
    raw = _padded(MIB)
    assert len(raw) == MIB
    assert receiver.post(raw, signed(raw)).status_code == 200
    wait_for(lambda: contact(receiver.db), what="the contact in SQLite")


# ---- the legacy RSA signature (X-WH-Signature) ---------------------------------------------------


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    """A stand-in for GHL's RSA key (its private half is not public)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def rsa_receiver(
    start_receiver: StartReceiver, rsa_key: rsa.RSAPrivateKey, tmp_path: Path
) -> Receiver:
    """A receiver trusting the sandbox Ed25519 key and our RSA key, loaded from PEM files."""
    pem = tmp_path / "rsa-public.pem"
    pem.write_bytes(
        rsa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return start_receiver(verifier=SignatureVerifier.load([WEBHOOK_PUBLIC_KEY_PATH, pem]))


def _rsa_sign(key: rsa.RSAPrivateKey, raw: bytes) -> str:
    return base64.b64encode(key.sign(raw, padding.PKCS1v15(), hashes.SHA256())).decode()


def test_legacy_rsa_signature_is_accepted_when_the_ghl_header_is_absent(
    rsa_receiver: Receiver, rsa_key: rsa.RSAPrivateKey
) -> None:
    raw = _good()
    response = rsa_receiver.post(raw, {"X-WH-Signature": _rsa_sign(rsa_key, raw)})
    assert response.status_code == 200, response.text
    assert wait_for(lambda: contact(rsa_receiver.db), what="the contact")["first_name"] == "Eve"


def test_legacy_rsa_signature_of_another_body_is_rejected(
    rsa_receiver: Receiver, rsa_key: rsa.RSAPrivateKey
) -> None:
    raw = _good()
    response = rsa_receiver.post(raw, {"X-WH-Signature": _rsa_sign(rsa_key, raw + b" ")})
    assert response.status_code == 401
    _assert_nothing_stored(rsa_receiver.db)


def test_a_bad_ed25519_signature_is_not_rescued_by_a_good_rsa_one(
    rsa_receiver: Receiver, rsa_key: rsa.RSAPrivateKey
) -> None:
    raw = _good()
    headers = {
        "X-GHL-Signature": _wrong_key().headers["X-GHL-Signature"],
        "X-WH-Signature": _rsa_sign(rsa_key, raw),
    }
    response = rsa_receiver.post(raw, headers)
    assert response.status_code == 401
    assert "X-GHL-Signature" in response.json()["error"]
    _assert_nothing_stored(rsa_receiver.db)


def test_the_rsa_key_is_not_trusted_for_ed25519_and_vice_versa(
    rsa_receiver: Receiver, rsa_key: rsa.RSAPrivateKey
) -> None:
    raw = _good()
    swapped = [
        {"X-GHL-Signature": _rsa_sign(rsa_key, raw)},
        {"X-WH-Signature": signed(raw)["X-GHL-Signature"]},
    ]
    for headers in swapped:
        assert rsa_receiver.post(raw, headers).status_code == 401
    _assert_nothing_stored(rsa_receiver.db)


# ---- a busy database -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["IMMEDIATE", "EXCLUSIVE"])
def test_a_locked_database_answers_429_and_loses_nothing(
    start_receiver: StartReceiver, mode: str
) -> None:
    receiver = start_receiver(busy_timeout_ms=100)
    raw = encode(event(firstName="Patient", email="patient@example.com"))
    with closing(sqlite3.connect(receiver.db, isolation_level=None)) as other:
        other.execute(f"BEGIN {mode}")
        try:
            refused = receiver.post(raw, signed(raw))
        finally:
            other.execute("ROLLBACK")

    assert refused.status_code == 429, refused.text
    assert refused.headers["Retry-After"].isdigit()
    assert rows(receiver.db, "inbox") == []

    # GHL retries the same delivery once the database is free again.
    retried = receiver.post(raw, signed(raw))
    assert retried.status_code == 200, retried.text
    assert retried.json()["duplicate"] is False
    row = wait_for(lambda: contact(receiver.db), what="the contact in SQLite")
    assert (row["first_name"], row["email"]) == ("Patient", "patient@example.com")
    assert [r["outcome"] for r in wait_processed(receiver.db)] == ["created"]
