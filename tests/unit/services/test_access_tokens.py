"""Access-token verification, and the memory of tokens already verified."""

from __future__ import annotations

import time
from uuid import uuid4

import pytest

from ckrv.services.gateway.identity import keys
from ckrv.services.gateway.identity.keys import (
    CLOCK_SKEW_SECONDS,
    InvalidAccessToken,
    SigningKeys,
    generate_signing_key,
)

ISSUER = "https://ckrv.test"


@pytest.fixture(scope="module")
def signing_keys() -> SigningKeys:
    return SigningKeys([generate_signing_key()], issuer=ISSUER)


def test_a_remembered_token_is_refused_once_it_expires(
    signing_keys: SigningKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    user_id = uuid4()
    token, lifetime = signing_keys.issue(user_id, lifetime_seconds=60)
    assert signing_keys.verify(token).user_id == user_id
    assert signing_keys.verify(token).user_id == user_id
    later = time.time() + lifetime + CLOCK_SKEW_SECONDS + 5
    monkeypatch.setattr(time, "time", lambda: later)
    with pytest.raises(InvalidAccessToken):
        signing_keys.verify(token)


def test_a_tampered_token_is_refused_even_after_the_genuine_one(
    signing_keys: SigningKeys,
) -> None:
    token, _ = signing_keys.issue(uuid4(), lifetime_seconds=60)
    signing_keys.verify(token)
    header, payload, signature = token.split(".")
    forged = f"{header}.{payload}.{signature[:-4]}AAAA"
    with pytest.raises(InvalidAccessToken):
        signing_keys.verify(forged)


def test_another_issuers_keys_do_not_verify(signing_keys: SigningKeys) -> None:
    other = SigningKeys([generate_signing_key()], issuer=ISSUER)
    token, _ = other.issue(uuid4(), lifetime_seconds=60)
    other.verify(token)
    with pytest.raises(InvalidAccessToken):
        signing_keys.verify(token)


def test_the_memory_of_verified_tokens_is_bounded(
    signing_keys: SigningKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keys, "VERIFIED_TOKENS_REMEMBERED", 3)
    tokens = [signing_keys.issue(uuid4(), lifetime_seconds=60)[0] for _ in range(5)]
    claims = [signing_keys.verify(token) for token in tokens]
    assert [signing_keys.verify(token) for token in tokens] == claims
    assert len(signing_keys._verified) <= 3
