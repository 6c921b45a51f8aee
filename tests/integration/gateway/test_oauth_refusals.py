"""OAuth requests the gateway refuses, each with its RFC error code: missing or wrong
parameters, unknown clients, scopes it does not have, token types it cannot revoke, and one
client's codes and tokens presented by another."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from ckrv.services.stack.nats_server import NatsServer
from ckrv.services.stack.postgres_server import PostgresServer
from tests.integration.gateway.test_sign_in import (
    CLIENT,
    DEVICE_GRANT,
    api,
    approved_tokens,
    new_user,
)
from tests.running_gateway import RunningGateway, started_gateway

pytestmark = pytest.mark.integration

OTHER_CLIENT = {"client_id": "ckrv-ci"}


def refused(response: httpx.Response, error: str, status_code: int = 400) -> None:
    assert response.status_code == status_code, response.text
    assert response.json()["error"] == error, response.text
    assert response.headers["cache-control"] == "no-store"


@pytest.fixture(scope="module")
async def two_client_gateway(
    nats_server: NatsServer, postgres_server: PostgresServer, gateway: RunningGateway
) -> AsyncIterator[RunningGateway]:
    """A second gateway on the same servers that knows two clients and logs at debug level."""
    async with started_gateway(
        nats_url=nats_server.url,
        database_url=postgres_server.dsn,
        switches={
            "CKRV_GATEWAY_OAUTH_CLIENTS": json.dumps([CLIENT["client_id"], "ckrv-ci"]),
            "CKRV_LOG_LEVEL": "debug",
        },
    ) as second:
        yield second


def test_token_requests_without_what_they_need(gateway: RunningGateway) -> None:
    with api(gateway) as client:
        refused(client.post("/auth/token", json=CLIENT), "invalid_request")
        refused(client.post("/auth/token", json={"grant_type": "refresh_token"}), "invalid_request")
        refused(client.post("/auth/token", json={"grant_type": DEVICE_GRANT}), "invalid_request")
        refused(
            client.post("/auth/token", json={"grant_type": DEVICE_GRANT, **CLIENT}),
            "invalid_request",
        )
        refused(
            client.post(
                "/auth/token",
                content=b'{"grant_type": ',
                headers={"content-type": "application/json"},
            ),
            "invalid_request",
        )
        refused(client.post("/auth/refresh", json={"refresh_token": "x"}), "invalid_request")
        refused(client.post("/auth/refresh", json=CLIENT), "invalid_request")


def test_unknown_clients_are_refused_with_401(gateway: RunningGateway) -> None:
    # A quote is a character RFC 6749 keeps out of error descriptions: the answer stays a 401.
    for client_id in ("nobody", 'ckrv"cli'):
        stranger = {"client_id": client_id}
        with api(gateway) as client:
            answers = [
                client.post("/auth/device", json=stranger),
                client.post(
                    "/auth/token",
                    json={"grant_type": DEVICE_GRANT, "device_code": "x", **stranger},
                ),
                client.post("/auth/refresh", json={"refresh_token": "x", **stranger}),
                client.post("/auth/revoke", data={"token": "x", **stranger}),
            ]
        for answer in answers:
            refused(answer, "invalid_client", 401)
            assert answer.headers["www-authenticate"].startswith("Basic ")


def test_grant_types_each_endpoint_does_not_take(gateway: RunningGateway) -> None:
    with api(gateway) as client:
        refused(
            client.post("/auth/refresh", json={"grant_type": DEVICE_GRANT, **CLIENT}),
            "unsupported_grant_type",
        )
        refused(
            client.post("/auth/token", data={"grant_type": "client_credentials", **CLIENT}),
            "unsupported_grant_type",
        )


async def test_only_the_jobs_scope_is_granted(
    gateway: RunningGateway, database: AsyncEngine
) -> None:
    with api(gateway) as client:
        refused(client.post("/auth/device", json={"scope": "admin", **CLIENT}), "invalid_scope")
        asked = client.post("/auth/device", json={"scope": "jobs", **CLIENT})
        assert asked.status_code == 200, asked.text

    tokens = await approved_tokens(gateway, database, await new_user(database))
    assert tokens["scope"] == "jobs"
    with api(gateway) as client:
        wider = {"refresh_token": tokens["refresh_token"], "scope": "jobs admin", **CLIENT}
        refused(client.post("/auth/refresh", json=wider), "invalid_scope")
        # The refusal used nothing up: the token still rotates, to the scope it had.
        rotated = client.post(
            "/auth/refresh", json={"refresh_token": tokens["refresh_token"], **CLIENT}
        )
        assert rotated.status_code == 200, rotated.text
        assert rotated.json()["scope"] == "jobs"


async def test_revocation_refusals_and_hints(
    gateway: RunningGateway, database: AsyncEngine
) -> None:
    user = await new_user(database)
    tokens = await approved_tokens(gateway, database, user)
    with api(gateway, tokens["access_token"]) as signed_in:
        api_token = signed_in.post("/tokens", json={"name": "revoked by hint"}).json()["token"]
    with api(gateway) as client:
        refused(client.post("/auth/revoke", json=CLIENT), "invalid_request")
        refused(
            client.post(
                "/auth/revoke",
                json={"token": tokens["refresh_token"], "token_type_hint": "id_token"},
            ),
            "unsupported_token_type",
        )
        # Refused, so nothing was revoked.
        rotated = client.post(
            "/auth/refresh", json={"refresh_token": tokens["refresh_token"], **CLIENT}
        )
        assert rotated.status_code == 200, rotated.text

        # Access tokens are signed and short-lived, kept nowhere: revoking one is a no-op,
        # answered as for any token the server does not know (RFC 7009 §2.2).
        access = client.post("/auth/revoke", json={"token": tokens["access_token"], **CLIENT})
        assert access.status_code == 200
        # A hint that names the wrong kind is only a hint: the API token goes all the same.
        wrong_hint = {"token": api_token, "token_type_hint": "refresh_token", **CLIENT}
        assert client.post("/auth/revoke", json=wrong_hint).status_code == 200
    with api(gateway, api_token) as script:
        assert script.get("/users/me").status_code == 401


async def test_one_clients_codes_and_tokens_are_no_use_to_another(
    two_client_gateway: RunningGateway, database: AsyncEngine
) -> None:
    user = await new_user(database)
    tokens = await approved_tokens(two_client_gateway, database, user)
    with api(two_client_gateway) as client:
        started: dict[str, Any] = client.post("/auth/device", json=CLIENT).json()
        refused(
            client.post(
                "/auth/token",
                json={
                    "grant_type": DEVICE_GRANT,
                    "device_code": started["device_code"],
                    **OTHER_CLIENT,
                },
            ),
            "invalid_grant",
        )
        refresh = {"refresh_token": tokens["refresh_token"]}
        refused(client.post("/auth/refresh", json={**refresh, **OTHER_CLIENT}), "invalid_grant")
        refused(
            client.post("/auth/revoke", json={"token": tokens["refresh_token"], **OTHER_CLIENT}),
            "invalid_grant",
        )
        # None of it used up or revoked the token for the client it was issued to.
        rotated = client.post("/auth/refresh", json={**refresh, **CLIENT})
        assert rotated.status_code == 200, rotated.text
    # At debug level authlib's grants would log each token they issue.
    log = two_client_gateway.log_path.read_text()
    issued = (tokens["access_token"], tokens["refresh_token"], rotated.json()["refresh_token"])
    for secret in issued:
        assert secret not in log
