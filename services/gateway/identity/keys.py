"""Access tokens: short-lived RS256 JWTs, signed with the first key of a key set, verified by `kid`.

Keys rotate by adding a new one first and keeping the old one for verification
until every token it signed has expired; `/.well-known/jwks.json` publishes the
public halves.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any
from uuid import UUID, uuid4

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, RSAKey
from joserfc.jwt import JWTClaimsRegistry

logger = logging.getLogger(__name__)

ALGORITHM = "RS256"
AUDIENCE = "ckrv-api"
CLOCK_SKEW_SECONDS = 30
# Verified tokens remembered, so a client's next requests skip the RSA check and claims parsing.
VERIFIED_TOKENS_REMEMBERED = 4096


class InvalidAccessToken(Exception):
    """The bearer token is not a valid access token of this service (any reason)."""


@dataclass(frozen=True)
class AccessClaims:
    user_id: UUID
    token_id: str
    expires_at: int
    scope: str


def generate_signing_key() -> dict[str, Any]:
    """A new private RSA key as a JWK, with a fresh `kid`."""
    key = RSAKey.generate_key(2048, parameters={"kid": uuid4().hex[:16], "use": "sig"})
    return dict(key.as_dict(private=True, alg=ALGORITHM))


class SigningKeys:
    """The key set: the first key signs, all keys verify."""

    def __init__(self, private_jwks: list[dict[str, Any]], *, issuer: str) -> None:
        if not private_jwks:
            raise ValueError("at least one signing key is needed")
        keys = [RSAKey.import_key(dict(jwk)) for jwk in private_jwks]
        for key in keys:
            if not key.kid:
                raise ValueError("every signing key needs a `kid`")
        self._keys = KeySet(keys)  # type: ignore[arg-type]
        self._active = keys[0]
        self.issuer = issuer
        self._kids = {key.kid for key in keys}
        self._claims = JWTClaimsRegistry(
            leeway=CLOCK_SKEW_SECONDS,
            iss={"essential": True, "value": issuer},
            aud={"essential": True, "value": AUDIENCE},
            sub={"essential": True},
            exp={"essential": True},
        )
        self._verified: dict[str, AccessClaims] = {}

    @classmethod
    def from_json(cls, text: str, *, issuer: str) -> SigningKeys:
        document = json.loads(text)
        keys = document["keys"] if isinstance(document, dict) else document
        return cls(list(keys), issuer=issuer)

    def public_jwks(self) -> dict[str, Any]:
        return {
            "keys": [
                {**key.as_dict(private=False), "alg": ALGORITHM, "use": "sig"}
                for key in self._keys.keys
            ]
        }

    def issue(
        self, user_id: UUID, *, lifetime_seconds: int, scope: str = "jobs"
    ) -> tuple[str, int]:
        """A signed access token for the user and its lifetime in seconds."""
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": AUDIENCE,
            "sub": str(user_id),
            "iat": now,
            "nbf": now,
            "exp": now + lifetime_seconds,
            "jti": uuid4().hex,
            "scope": scope,
        }
        header = {"alg": ALGORITHM, "kid": self._active.kid, "typ": "at+jwt"}
        return jwt.encode(header, claims, self._active, algorithms=[ALGORITHM]), lifetime_seconds

    def verify(self, token: str) -> AccessClaims:
        """The token's claims if this service signed it and it is current; else raise."""
        remembered = self._verified.get(token)
        # Claims only become more valid with time (`nbf`, `iat`), except expiry; a token in
        # its clock-skew grace goes through the whole check again.
        if remembered is not None and time.time() < remembered.expires_at:
            return remembered
        claims = self._verify_signed(token)
        if len(self._verified) >= VERIFIED_TOKENS_REMEMBERED:
            # Dicts keep insertion order: the oldest entry goes first.
            del self._verified[next(iter(self._verified))]
        self._verified[token] = claims
        return claims

    def _verify_signed(self, token: str) -> AccessClaims:
        try:
            decoded = jwt.decode(token, self._keys, algorithms=[ALGORITHM])
            if decoded.header.get("kid") not in self._kids:
                raise InvalidAccessToken("unknown key id")
            self._claims.validate(decoded.claims)
            return AccessClaims(
                user_id=UUID(str(decoded.claims["sub"])),
                token_id=str(decoded.claims.get("jti", "")),
                expires_at=int(decoded.claims["exp"]),
                scope=str(decoded.claims.get("scope", "")),
            )
        except (JoseError, ValueError, KeyError, TypeError) as error:
            raise InvalidAccessToken(type(error).__name__) from error
