"""Standard Webhooks signing secrets: making them, sealing them at rest, signing with them.

A secret is `whsec_` and the base64 of random bytes; the bytes are the HMAC-SHA256
key. A delivery's `webhook-signature` is `v1,` and the base64 MAC of
`<webhook-id>.<webhook-timestamp>.<body>`, once per valid secret, space-separated.
Stored secrets are sealed with the credential key ring, bound to their endpoint.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Iterable
from uuid import UUID

from ckrv.services.common.sealing import KeyRing, Sealed

SECRET_PREFIX = "whsec_"  # noqa: S105 - the prefix every secret starts with, not one
# 24 bytes encode to 32 base64 characters without padding, as Standard Webhooks' examples.
SECRET_BYTES = 24
SIGNATURE_VERSION = "v1"


def new_signing_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def signing_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_…` secret."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)


def signed_content(message_id: str, timestamp: int, body: bytes) -> bytes:
    return f"{message_id}.{timestamp}.".encode() + body


def signature(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """One `v1,<base64>` signature of a delivery."""
    mac = hmac.new(key, signed_content(message_id, timestamp, body), hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(mac).decode()}"


def signature_header(keys: Iterable[bytes], message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: a signature per key, space-separated."""
    return " ".join(signature(key, message_id, timestamp, body) for key in keys)


def _bound_to(endpoint_id: UUID) -> bytes:
    """The associated data of a secret's ciphertext: its endpoint."""
    return b"ckrv webhook secret\x00" + endpoint_id.bytes


def seal_secret(keys: KeyRing, endpoint_id: UUID, secret: str) -> Sealed:
    return keys.seal(secret.encode(), _bound_to(endpoint_id))


def open_secret(keys: KeyRing, endpoint_id: UUID, sealed: Sealed) -> str:
    """The secret; `UnsealError` if it does not open (another key, endpoint or altered bytes)."""
    return keys.open(sealed, _bound_to(endpoint_id)).decode()
