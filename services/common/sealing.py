"""AES-GCM encryption of stored secrets under a key ring whose first key seals and all keys open.

The ring comes from settings as `kid:base64key,kid2:base64key,…`. Keys rotate by
putting a new one first: new values are sealed under it, values sealed earlier
still open under the key id stored beside them. The caller binds each sealed
value to where it is stored (associated data), so a ciphertext copied to another
row does not open.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,50}$")
AES_KEY_BYTES = (16, 24, 32)
NONCE_BYTES = 12
TAG_BYTES = 16


class KeyRingError(ValueError):
    """The key ring's text is malformed; the message names the problem, never a key."""


class UnsealError(Exception):
    """A sealed value does not open: unknown key id, altered bytes, or other associated data."""


@dataclass(frozen=True)
class Sealed:
    key_id: str
    ciphertext: bytes
    """The nonce followed by the AES-GCM ciphertext and tag."""


class KeyRing:
    """AES keys by id; the first one seals. Its repr names the ids only."""

    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        if not keys:
            raise KeyRingError("the key ring needs at least one key")
        self._ciphers: dict[str, AESGCM] = {}
        for key_id, key in keys:
            if not KEY_ID_PATTERN.fullmatch(key_id):
                raise KeyRingError(
                    f"key id {key_id!r} must be 1-50 letters, digits, dots, dashes or underscores"
                )
            if key_id in self._ciphers:
                raise KeyRingError(f"key id {key_id!r} appears twice")
            if len(key) not in AES_KEY_BYTES:
                raise KeyRingError(f"key {key_id!r} must be 16, 24 or 32 bytes, not {len(key)}")
            self._ciphers[key_id] = AESGCM(key)
        self.sealing_key_id = keys[0][0]

    @classmethod
    def parse(cls, text: str) -> KeyRing:
        """`kid:base64key[,kid2:base64key…]`, first key first."""
        keys: list[tuple[str, bytes]] = []
        for position, entry in enumerate(text.split(","), start=1):
            key_id, separator, encoded = entry.strip().partition(":")
            if not separator:
                raise KeyRingError(f"entry {position} is not `kid:base64key`")
            try:
                key = base64.b64decode(encoded.strip(), validate=True)
            except binascii.Error:
                raise KeyRingError(f"key {key_id!r} is not valid base64") from None
            keys.append((key_id, key))
        return cls(keys)

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._ciphers)

    def seal(self, plaintext: bytes, associated_data: bytes) -> Sealed:
        nonce = os.urandom(NONCE_BYTES)
        cipher = self._ciphers[self.sealing_key_id]
        return Sealed(
            self.sealing_key_id, nonce + cipher.encrypt(nonce, plaintext, associated_data)
        )

    def open(self, sealed: Sealed, associated_data: bytes) -> bytes:
        cipher = self._ciphers.get(sealed.key_id)
        if cipher is None:
            raise UnsealError(f"sealed under key {sealed.key_id!r}, which is not in the key ring")
        if len(sealed.ciphertext) < NONCE_BYTES + TAG_BYTES:
            raise UnsealError("the sealed value is truncated")
        nonce, ciphertext = sealed.ciphertext[:NONCE_BYTES], sealed.ciphertext[NONCE_BYTES:]
        try:
            return cipher.decrypt(nonce, ciphertext, associated_data)
        except InvalidTag:
            raise UnsealError(
                "the sealed value was altered or belongs elsewhere (authentication failed)"
            ) from None

    def __repr__(self) -> str:
        return f"KeyRing(key_ids={list(self.key_ids)!r})"


def generate_key_entry(key_id: str) -> str:
    """A new random 256-bit key as one `kid:base64key` entry of a key ring."""
    return f"{key_id}:{base64.b64encode(AESGCM.generate_key(bit_length=256)).decode()}"
