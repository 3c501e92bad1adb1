"""Ed25519 signing of sandbox webhook bodies, mirroring GHL's ``X-GHL-Signature`` header.

GHL signs the exact raw body bytes with Ed25519 and sends the base64 signature; a receiver must
verify those bytes before parsing them. The sandbox does the same with a fixed *test* key pair
shipped in ``keys/`` (see ``keys/README.md``), so a receiver's verification path is exercised
end to end without GHL's private key.
"""

from __future__ import annotations

import base64
import binascii
import functools
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

KEYS_DIR = Path(__file__).resolve().parent / "keys"
WEBHOOK_PRIVATE_KEY_PATH = KEYS_DIR / "sandbox-webhook-ed25519-private.pem"
WEBHOOK_PUBLIC_KEY_PATH = KEYS_DIR / "sandbox-webhook-ed25519-public.pem"
SIGNATURE_HEADER = "X-GHL-Signature"


@functools.cache
def _private_key() -> Ed25519PrivateKey:
    key = load_pem_private_key(WEBHOOK_PRIVATE_KEY_PATH.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise TypeError(f"{WEBHOOK_PRIVATE_KEY_PATH} is not an Ed25519 private key")
    return key


@functools.cache
def _public_key() -> Ed25519PublicKey:
    key = load_pem_public_key(WEBHOOK_PUBLIC_KEY_PATH.read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise TypeError(f"{WEBHOOK_PUBLIC_KEY_PATH} is not an Ed25519 public key")
    return key


def sign_body(body: bytes) -> str:
    """The ``X-GHL-Signature`` value for ``body``: base64 of its Ed25519 signature."""
    return base64.b64encode(_private_key().sign(body)).decode("ascii")


def verify_body(body: bytes, signature: str) -> bool:
    """Whether ``signature`` is the sandbox key's signature of ``body``."""
    try:
        _public_key().verify(base64.b64decode(signature, validate=True), body)
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True
