"""Password hashes for local accounts: scrypt (stdlib) with a per-account salt.

A stored hash reads `scrypt$<log2 n>$<r>$<p>$<salt>$<hash>` (base64url), so the
cost can be raised later and old hashes still verify with their own parameters.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from functools import cache

# OWASP's scrypt recommendation: n = 2**15, r = 8, p = 3 (32 MiB; about half a second here).
LOG2_N = 15
BLOCK_SIZE = 8
PARALLELISM = 3
SALT_BYTES = 16
HASH_BYTES = 32
MIN_PASSWORD_LENGTH = 10
# Long enough for any passphrase, short enough that hashing one is no denial of service.
MAX_PASSWORD_LENGTH = 1024


def _scrypt(password: str, salt: bytes, *, log2_n: int, r: int, p: int, length: int) -> bytes:
    n = 2**log2_n
    # scrypt needs 128 * n * r * p bytes; allow that plus headroom (the default cap is 32 MiB).
    return hashlib.scrypt(
        password.encode(),
        salt=salt,
        n=n,
        r=r,
        p=p,
        maxmem=128 * n * r * p + 16 * 1024 * 1024,
        dklen=length,
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(password, salt, log2_n=LOG2_N, r=BLOCK_SIZE, p=PARALLELISM, length=HASH_BYTES)
    return f"scrypt${LOG2_N}${BLOCK_SIZE}${PARALLELISM}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """Whether `password` matches `stored`; compared in constant time."""
    try:
        scheme, log2_n, r, p, salt, digest = stored.split("$")
        expected = _unb64(digest)
        if scheme != "scrypt":
            return False
        actual = _scrypt(
            password,
            _unb64(salt),
            log2_n=int(log2_n),
            r=int(r),
            p=int(p),
            length=len(expected),
        )
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


@cache
def unknown_account_hash() -> str:
    """Verified against when the email is unknown, so that takes as long as a wrong password."""
    return hash_password(secrets.token_urlsafe(16))


def password_problem(password: str) -> str | None:
    """Why a new password is refused, or None."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"Choose a password of at least {MIN_PASSWORD_LENGTH} characters."
    if len(password) > MAX_PASSWORD_LENGTH:
        return f"Choose a password of at most {MAX_PASSWORD_LENGTH} characters."
    return None
