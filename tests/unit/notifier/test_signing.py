"""Signing secrets and signatures, checked against the Standard Webhooks reference library."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from uuid import uuid4

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from ckrv.services.common.sealing import KeyRing, UnsealError, generate_key_entry
from ckrv.services.notifier.signing import (
    new_signing_secret,
    open_secret,
    seal_secret,
    signature,
    signature_header,
    signing_key,
)

BODY = b'{"type":"job.succeeded","timestamp":"2025-06-01T12:00:00Z","data":{}}'


def test_a_secret_is_whsec_and_24_random_bytes() -> None:
    secrets = {new_signing_secret() for _ in range(50)}
    assert len(secrets) == 50
    for secret in secrets:
        assert secret.startswith("whsec_")
        assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 24
        assert signing_key(secret) == base64.b64decode(secret[len("whsec_") :])


def test_the_signature_is_the_reference_librarys() -> None:
    secret = new_signing_secret()
    timestamp = int(datetime.now(UTC).timestamp())
    ours = signature(signing_key(secret), "msg_1", timestamp, BODY)
    theirs = Webhook(secret).sign("msg_1", datetime.fromtimestamp(timestamp, UTC), BODY.decode())
    assert ours == theirs
    assert ours.startswith("v1,")


def test_a_receiver_accepts_either_of_two_secrets_and_no_other() -> None:
    current, previous, stranger = new_signing_secret(), new_signing_secret(), new_signing_secret()
    timestamp = int(datetime.now(UTC).timestamp())
    headers = {
        "webhook-id": "msg_2",
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(
            [signing_key(current), signing_key(previous)], "msg_2", timestamp, BODY
        ),
    }
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert Webhook(current).verify(BODY, headers)["type"] == "job.succeeded"
    assert Webhook(previous).verify(BODY, headers)["type"] == "job.succeeded"
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(stranger).verify(BODY, headers)
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(current).verify(BODY.replace(b"succeeded", b"failed"), headers)


def test_a_sealed_secret_opens_for_its_own_endpoint_only() -> None:
    keys = KeyRing.parse(generate_key_entry("k1"))
    secret = new_signing_secret()
    endpoint_id = uuid4()
    sealed = seal_secret(keys, endpoint_id, secret)
    assert secret.encode() not in sealed.ciphertext
    assert open_secret(keys, endpoint_id, sealed) == secret
    with pytest.raises(UnsealError):
        open_secret(keys, uuid4(), sealed)
