"""Sign-in through the gateway process: the device flow, refresh rotation, revocation,
API tokens, and every kind of bad access token refused."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col

from ckrv.services.common.db import create_engine, session_factory
from ckrv.services.gateway.identity.flows import (
    decide_device_authorization,
    normalise_user_code,
)
from ckrv.services.gateway.identity.keys import AUDIENCE, generate_signing_key
from ckrv.services.gateway.identity.tables import ApiToken, DeviceAuthorization, RefreshToken
from ckrv.services.gateway.tables import User
from ckrv.services.stack.postgres_server import PostgresServer
from tests.integration.gateway.jobs import job_body
from tests.running_gateway import RunningGateway

pytestmark = pytest.mark.integration

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
CLIENT = {"client_id": "ckrv-cli"}


@pytest.fixture
async def database(postgres_server: PostgresServer) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(postgres_server.dsn)
    yield engine
    await engine.dispose()


async def new_user(engine: AsyncEngine, tier: str = "free") -> User:
    user = User(id=uuid4(), email=f"{uuid4().hex[:12]}@example.com", subscription_tier=tier)
    async with session_factory(engine)() as session, session.begin():
        session.add(user)
    return user


def api(gateway: RunningGateway, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=gateway.api_url, headers=headers, timeout=30)


async def device_flow(
    gateway: RunningGateway, engine: AsyncEngine, user: User
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the device flow for `user`, approving as the activation page would: the flow as
    started (device and user code) and the tokens it yielded."""
    with api(gateway) as client:
        started: dict[str, Any] = client.post("/auth/device", json=CLIENT).json()
        async with session_factory(engine)() as session, session.begin():
            assert await decide_device_authorization(
                session, started["user_code"], user.id, approve=True
            )
        response = client.post(
            "/auth/token",
            json={"grant_type": DEVICE_GRANT, "device_code": started["device_code"], **CLIENT},
        )
    assert response.status_code == 200, response.text
    tokens: dict[str, Any] = response.json()
    return started, tokens


async def approved_tokens(
    gateway: RunningGateway, engine: AsyncEngine, user: User
) -> dict[str, Any]:
    return (await device_flow(gateway, engine, user))[1]


async def test_the_device_flow_from_code_to_tokens(
    gateway: RunningGateway, database: AsyncEngine
) -> None:
    user = await new_user(database, "pro")
    with api(gateway) as client:
        started = client.post("/auth/device", json=CLIENT)
        assert started.status_code == 200
        flow = started.json()
        assert re.fullmatch(r"[BCDFGHJKLMNPQRSTVWXZ]{4}-[2-9]{4}", flow["user_code"])
        assert flow["verification_uri"] == f"{gateway.url}/activate"
        assert flow["verification_uri_complete"].endswith(f"?user_code={flow['user_code']}")
        assert flow["expires_in"] == 900
        assert flow["interval"] == 5
        poll = {"grant_type": DEVICE_GRANT, "device_code": flow["device_code"], **CLIENT}

        pending = client.post("/auth/token", json=poll)
        assert pending.status_code == 400
        assert pending.json()["error"] == "authorization_pending"
        # Polling again at once is faster than the interval allows.
        hurried = client.post("/auth/token", data=poll)
        assert hurried.json()["error"] == "slow_down"

        async with session_factory(database)() as session, session.begin():
            assert await decide_device_authorization(
                session, flow["user_code"].lower(), user.id, approve=True
            )
        granted = client.post("/auth/token", data=poll)
        assert granted.status_code == 200, granted.text
        tokens = granted.json()
        assert granted.headers["cache-control"] == "no-store"
        assert tokens["token_type"] == "Bearer"
        assert 0 < tokens["expires_in"] <= 900
        header = json.loads(base64.urlsafe_b64decode(tokens["access_token"].split(".")[0] + "=="))
        assert header["alg"] == "RS256"
        assert header["kid"]

        # A device code yields tokens once.
        assert client.post("/auth/token", json=poll).json()["error"] == "invalid_grant"
    with api(gateway, tokens["access_token"]) as signed_in:
        me = signed_in.get("/users/me").json()
    assert me["email"] == user.email
    assert me["subscription_tier"] == "pro"


async def test_denied_and_expired_codes(gateway: RunningGateway, database: AsyncEngine) -> None:
    user = await new_user(database)
    with api(gateway) as client:
        denied = client.post("/auth/device", json=CLIENT).json()
        expired = client.post("/auth/device", json=CLIENT).json()
        async with session_factory(database)() as session, session.begin():
            await decide_device_authorization(session, denied["user_code"], user.id, approve=False)
            await session.execute(
                update(DeviceAuthorization)
                .where(
                    col(DeviceAuthorization.user_code) == normalise_user_code(expired["user_code"])
                )
                .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
            )
        for flow, error in ((denied, "access_denied"), (expired, "expired_token")):
            answer = client.post(
                "/auth/token",
                json={"grant_type": DEVICE_GRANT, "device_code": flow["device_code"], **CLIENT},
            )
            assert answer.status_code == 400
            assert answer.json()["error"] == error
        # An expired code can no longer be approved.
        async with session_factory(database)() as session, session.begin():
            assert not await decide_device_authorization(
                session, expired["user_code"], user.id, approve=True
            )


def test_bad_device_requests(gateway: RunningGateway) -> None:
    with api(gateway) as client:
        assert client.post("/auth/device", json={"client_id": "nobody"}).status_code == 401
        assert client.post("/auth/device", json={}).json()["error"] == "invalid_request"
        unknown = client.post(
            "/auth/token", json={"grant_type": DEVICE_GRANT, "device_code": "nope", **CLIENT}
        )
        assert unknown.json()["error"] == "invalid_grant"
        other = client.post("/auth/token", json={"grant_type": "password", **CLIENT})
        assert other.json()["error"] == "unsupported_grant_type"


async def test_refresh_tokens_rotate_and_a_reused_one_revokes_the_family(
    gateway: RunningGateway, database: AsyncEngine
) -> None:
    user = await new_user(database)
    first = await approved_tokens(gateway, database, user)
    with api(gateway) as client:
        second = client.post(
            "/auth/refresh", json={"refresh_token": first["refresh_token"], **CLIENT}
        )
        assert second.status_code == 200
        rotated = second.json()
        assert rotated["refresh_token"] != first["refresh_token"]

        # The old token again: someone else has it. Both it and the new one stop working.
        reused = client.post(
            "/auth/refresh", json={"refresh_token": first["refresh_token"], **CLIENT}
        )
        assert reused.json()["error"] == "invalid_grant"
        after = client.post(
            "/auth/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": rotated["refresh_token"],
                **CLIENT,
            },
        )
        assert after.json()["error"] == "invalid_grant"


async def test_revoking_a_refresh_token_ends_its_login(
    gateway: RunningGateway, database: AsyncEngine
) -> None:
    user = await new_user(database)
    tokens = await approved_tokens(gateway, database, user)
    with api(gateway) as client:
        assert (
            client.post("/auth/revoke", json={"token": tokens["refresh_token"]}).status_code == 200
        )
        assert client.post("/auth/revoke", data={"token": "never-issued"}).status_code == 200
        refused = client.post(
            "/auth/refresh", json={"refresh_token": tokens["refresh_token"], **CLIENT}
        )
        assert refused.json()["error"] == "invalid_grant"


async def test_api_tokens_are_shown_once_work_and_can_be_revoked(
    gateway: RunningGateway, database: AsyncEngine
) -> None:
    user = await new_user(database, "enterprise")
    tokens = await approved_tokens(gateway, database, user)
    with api(gateway, tokens["access_token"]) as client:
        created = client.post("/tokens", json={"name": "ci", "expires_in_days": 30})
        assert created.status_code == 201
        value = created.json()["token"]
        assert value.startswith("ckrv_")
        listed = client.get("/tokens").json()["tokens"]
        assert [token["name"] for token in listed] == ["ci"]
        assert "token" not in listed[0]
        assert value.startswith(listed[0]["display_prefix"])
        with api(gateway, value) as script:
            assert script.get("/users/me").json()["email"] == user.email
            assert script.post("/jobs", json=job_body()).status_code == 201
        assert client.delete(f"/tokens/{created.json()['id']}").status_code == 204
        assert client.delete(f"/tokens/{created.json()['id']}").status_code == 404
    with api(gateway, value) as script:
        assert script.get("/users/me").status_code == 401


async def test_secrets_are_stored_as_their_sha256_hashes(
    gateway: RunningGateway, database: AsyncEngine
) -> None:
    user = await new_user(database)
    started, tokens = await device_flow(gateway, database, user)
    with api(gateway, tokens["access_token"]) as client:
        created = client.post("/tokens", json={"name": "hashed at rest"})
    assert created.status_code == 201
    api_token = created.json()["token"]
    secrets = (started["device_code"], tokens["refresh_token"], api_token)

    async with database.connect() as connection:
        # Every column of every row, as PostgreSQL renders it: a secret kept in any form of
        # text would show up here.
        stored = " ".join(
            [
                row
                for table in ("device_authorizations", "refresh_tokens", "api_tokens")
                for row in (await connection.execute(text(f"SELECT t::text FROM {table} t")))
                .scalars()
                .all()
            ]
        )
        device_code_hash = (
            await connection.execute(
                select(col(DeviceAuthorization.device_code_hash)).where(
                    col(DeviceAuthorization.user_id) == user.id
                )
            )
        ).scalar_one()
        refresh_token_hash = (
            await connection.execute(
                select(col(RefreshToken.token_hash)).where(col(RefreshToken.user_id) == user.id)
            )
        ).scalar_one()
        api_token_hash = (
            await connection.execute(
                select(col(ApiToken.token_hash)).where(col(ApiToken.user_id) == user.id)
            )
        ).scalar_one()
    hashes = [device_code_hash, refresh_token_hash, api_token_hash]
    # The documented form (tables.py): the SHA-256 hex digest of the secret.
    assert hashes == [hashlib.sha256(secret.encode()).hexdigest() for secret in secrets]
    for secret, hashed in zip(secrets, hashes, strict=True):
        assert hashed in stored  # the scan saw the row...
        assert secret not in stored  # ...and the secret nowhere in it


async def test_an_expired_api_token_is_refused(
    gateway: RunningGateway, database: AsyncEngine
) -> None:
    user = await new_user(database)
    tokens = await approved_tokens(gateway, database, user)
    with api(gateway, tokens["access_token"]) as client:
        created = client.post("/tokens", json={"name": "short-lived", "expires_in_days": 1})
    assert created.status_code == 201
    value = created.json()["token"]
    with api(gateway, value) as script:
        assert script.get("/users/me").status_code == 200
        # A day is the shortest lifetime the API grants; move its end into the past.
        async with session_factory(database)() as session, session.begin():
            await session.execute(
                update(ApiToken)
                .where(col(ApiToken.id) == UUID(created.json()["id"]))
                .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
            )
        for response in (script.get("/users/me"), script.post("/jobs", json=job_body())):
            assert response.status_code == 401
            assert response.json()["error"] == "unauthorized"


async def test_one_users_api_tokens_are_out_of_another_users_reach(
    gateway: RunningGateway, database: AsyncEngine
) -> None:
    alice, bob = await new_user(database), await new_user(database)
    alice_tokens = await approved_tokens(gateway, database, alice)
    bob_tokens = await approved_tokens(gateway, database, bob)
    with api(gateway, alice_tokens["access_token"]) as as_alice:
        created = as_alice.post("/tokens", json={"name": "alice's ci"}).json()
    with api(gateway, bob_tokens["access_token"]) as as_bob:
        assert as_bob.get("/tokens").json()["tokens"] == []
        assert as_bob.delete(f"/tokens/{created['id']}").status_code == 404
    # Bob's attempt changed nothing: Alice's token still lists and works.
    with api(gateway, alice_tokens["access_token"]) as as_alice:
        assert [token["id"] for token in as_alice.get("/tokens").json()["tokens"]] == [
            created["id"]
        ]
    with api(gateway, created["token"]) as script:
        assert script.get("/users/me").json()["email"] == alice.email


def tampered(segment: str) -> str:
    """The same base64url segment with one character changed."""
    swapped = "A" if segment[-2] != "A" else "B"
    return f"{segment[:-2]}{swapped}{segment[-1]}"


def forged(gateway: RunningGateway, **changes: Any) -> str:
    """An access token like the gateway's, with some claims or the key changed."""
    key = RSAKey.import_key(changes.pop("key", gateway.signing_keys[0]))
    now = int(time.time())
    claims = {
        "iss": gateway.url,
        "aud": AUDIENCE,
        "sub": changes.pop("sub", str(uuid4())),
        "iat": now,
        "exp": now + 300,
    } | changes
    return jwt.encode({"alg": "RS256", "kid": key.kid}, claims, key)


async def test_bad_access_tokens_are_refused(
    gateway: RunningGateway, database: AsyncEngine
) -> None:
    user = await new_user(database)
    good = forged(gateway, sub=str(user.id))
    with api(gateway, good) as client:
        assert client.get("/users/me").status_code == 200
    stranger_key = generate_signing_key()
    stranger_key["kid"] = gateway.signing_keys[0]["kid"]
    unknown_kid = dict(gateway.signing_keys[0]) | {"kid": "not-a-key-of-ours"}
    header, payload, signature = good.split(".")
    bad_tokens = {
        "expired": forged(gateway, sub=str(user.id), exp=int(time.time()) - 120),
        "wrong audience": forged(gateway, sub=str(user.id), aud="someone-else"),
        "wrong issuer": forged(gateway, sub=str(user.id), iss="https://evil.example"),
        "unknown kid": forged(gateway, sub=str(user.id), key=unknown_kid),
        "signed by another key": forged(gateway, sub=str(user.id), key=stranger_key),
        "tampered": f"{header}.{tampered(payload)}.{signature}",
        "unsigned": f"{header}.{payload}.",
        "unknown user": forged(gateway),
    }
    for reason, token in bad_tokens.items():
        with api(gateway, token) as client:
            # Reading the user, and submitting, which checks the token without reading it.
            responses = [client.get("/users/me"), client.post("/jobs", json=job_body())]
        for response in responses:
            assert response.status_code == 401, reason
            assert response.json()["error"] == "unauthorized", reason


async def test_one_users_token_never_reaches_another_users_jobs(
    gateway: RunningGateway, database: AsyncEngine
) -> None:
    alice, bob = await new_user(database, "pro"), await new_user(database, "pro")
    alice_tokens = await approved_tokens(gateway, database, alice)
    bob_tokens = await approved_tokens(gateway, database, bob)
    with api(gateway, alice_tokens["access_token"]) as as_alice:
        job_id = as_alice.post("/jobs", json=job_body()).json()["id"]
    with api(gateway, bob_tokens["access_token"]) as as_bob:
        assert as_bob.get(f"/jobs/{job_id}").status_code == 404
        assert as_bob.post(f"/jobs/{job_id}/cancel").status_code == 404
        assert as_bob.get(f"/jobs/{job_id}/events").status_code == 404
        assert as_bob.get("/jobs").json()["jobs"] == []


async def test_no_secret_reaches_the_log(gateway: RunningGateway, database: AsyncEngine) -> None:
    user = await new_user(database)
    tokens = await approved_tokens(gateway, database, user)
    with api(gateway, tokens["access_token"]) as client:
        api_token = client.post("/tokens", json={"name": "log check"}).json()["token"]
        client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"], **CLIENT})
        client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"], **CLIENT})
    with api(gateway, api_token) as script:
        script.get("/users/me")
    log = gateway.log_path.read_text()
    for secret in (tokens["access_token"], tokens["refresh_token"], api_token):
        assert secret not in log
        assert secret[:20] not in log


def test_discovery_documents(gateway: RunningGateway) -> None:
    metadata = httpx.get(f"{gateway.url}/.well-known/oauth-authorization-server").json()
    assert metadata["issuer"] == gateway.url
    assert metadata["device_authorization_endpoint"] == f"{gateway.api_url}/auth/device"
    assert metadata["token_endpoint"] == f"{gateway.api_url}/auth/token"
    jwks = httpx.get(metadata["jwks_uri"]).json()
    (published,) = jwks["keys"]
    assert published["kid"] == gateway.signing_keys[0]["kid"]
    assert "d" not in published  # the public half only
