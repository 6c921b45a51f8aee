"""Webhook URLs in cloud mode: https on public addresses only; nothing is stored for the others.

A gateway replica of its own runs with `CKRV_ENV=production`, every setting given
explicitly as production requires, on the session's servers.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from uuid import UUID

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col

from ckrv.services.common.db import session_factory
from ckrv.services.common.sealing import generate_key_entry
from ckrv.services.notifier.tables import WebhookEndpoint
from ckrv.services.stack.nats_server import NatsServer
from ckrv.services.stack.postgres_server import PostgresServer
from tests.running_gateway import RunningGateway, started_gateway

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def cloud_gateway(
    nats_server: NatsServer, postgres_server: PostgresServer, gateway: RunningGateway
) -> AsyncIterator[RunningGateway]:
    async with started_gateway(
        nats_url=nats_server.url,
        database_url=postgres_server.dsn,
        switches={
            "CKRV_ENV": "production",
            "CKRV_GATEWAY_ALLOW_LOCAL_REPOSITORIES": "false",
            "CKRV_CREDENTIAL_KEYS": generate_key_entry("cloud"),
            "CKRV_S3_ENDPOINT": "https://s3.example.com",
            "CKRV_S3_ACCESS_KEY": "cloud-tests",
            "CKRV_S3_SECRET_KEY": secrets.token_urlsafe(16),
            "CKRV_GATEWAY_PUBLIC_URL": "https://api.ckrv.example",
            "CKRV_GATEWAY_SESSION_SECRET": secrets.token_urlsafe(32),
        },
    ) as cloud:
        yield cloud


@pytest.fixture
def cloud_client(cloud_gateway: RunningGateway) -> Iterator[httpx.Client]:
    token = cloud_gateway.token(f"cloud-{secrets.token_hex(6)}@example.com")
    with httpx.Client(
        base_url=cloud_gateway.api_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as client:
        yield client


async def webhooks_of(database: AsyncEngine, client: httpx.Client) -> int:
    owner = UUID(client.get("/users/me").json()["id"])
    async with session_factory(database)() as session:
        count = await session.scalar(
            select(func.count()).where(col(WebhookEndpoint.user_id) == owner)
        )
    return count or 0


REFUSED = {
    "http": ("http://8.8.8.8/ckrv", "url: must be an https URL"),
    "loopback": ("https://127.0.0.1/ckrv", "url: 127.0.0.1 is not a public address"),
    "loopback v6": ("https://[::1]:8443/ckrv", "url: ::1 is not a public address"),
    "private": ("https://10.20.30.40/ckrv", "url: 10.20.30.40 is not a public address"),
    "link-local": (
        "https://169.254.169.254/latest",
        "url: 169.254.169.254 is not a public address",
    ),
    "shared": ("https://100.64.1.1/ckrv", "url: 100.64.1.1 is not a public address"),
    "mapped private": (
        "https://[::ffff:192.168.1.1]/ckrv",
        "url: ::ffff:c0a8:101 is not a public address",
    ),
    "a name for loopback": (
        "https://localhost:8443/ckrv",
        "url: localhost resolves to 127.0.0.1, which is not a public address",
    ),
    "a name that does not resolve": ("https://hooks.invalid/ckrv", "url: hooks.invalid does not"),
}


@pytest.mark.parametrize(("url", "message"), REFUSED.values(), ids=REFUSED.keys())
async def test_a_url_off_the_public_internet_is_refused(
    url: str, message: str, cloud_client: httpx.Client, database: AsyncEngine
) -> None:
    response = cloud_client.post("/webhooks", json={"url": url})

    assert response.status_code == 422, response.text
    answer = response.json()
    assert answer["error"] == "webhook_url_not_allowed"
    assert answer["message"].startswith(message)
    assert answer["details"][0]["field"] == "url"
    assert await webhooks_of(database, cloud_client) == 0


def test_https_on_a_public_address_is_taken_and_stays_so(cloud_client: httpx.Client) -> None:
    created = cloud_client.post("/webhooks", json={"url": "https://8.8.8.8/ckrv"})
    assert created.status_code == 201, created.text
    webhook = created.json()

    moved = cloud_client.patch(
        f"/webhooks/{webhook['id']}", json={"url": "https://192.168.0.10/ckrv"}
    )

    assert moved.status_code == 422, moved.text
    assert moved.json()["error"] == "webhook_url_not_allowed"
    assert cloud_client.get(f"/webhooks/{webhook['id']}").json()["url"] == "https://8.8.8.8/ckrv"
