"""Clients of the session's gateway process, one fresh user each; NATS and PostgreSQL beside it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from uuid import uuid4

import httpx
import nats
import pytest
from nats.aio.client import Client
from sqlalchemy.ext.asyncio import AsyncEngine

from ckrv.events.store import JobEventStore
from ckrv.services.common.db import create_engine
from ckrv.services.stack.nats_server import NatsServer
from ckrv.services.stack.postgres_server import PostgresServer
from tests.running_gateway import RunningGateway

ClientFactory = Callable[..., httpx.Client]


@pytest.fixture
def client_for(gateway: RunningGateway) -> Iterator[ClientFactory]:
    """`client_for(tier="free")`: an HTTP client signed in as a new user of that tier."""
    clients: list[httpx.Client] = []

    def make(tier: str = "free", email: str | None = None) -> httpx.Client:
        email = email or f"user-{uuid4().hex[:12]}@example.com"
        client = httpx.Client(
            base_url=gateway.api_url,
            headers={"Authorization": f"Bearer {gateway.token(email, tier)}"},
            timeout=30,
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(client_for: ClientFactory) -> httpx.Client:
    return client_for()


@pytest.fixture(scope="session")
async def nc(nats_server: NatsServer, gateway: RunningGateway) -> AsyncIterator[Client]:
    """A NATS connection of the tests' own (the gateway has provisioned the streams)."""
    connection = await nats.connect(nats_server.url)
    yield connection
    await connection.close()


@pytest.fixture
def store(nc: Client) -> JobEventStore:
    """The JOBS stream as other services append to it."""
    return JobEventStore(nc)


@pytest.fixture(scope="session")
async def database(postgres_server: PostgresServer) -> AsyncIterator[AsyncEngine]:
    """The gateway's PostgreSQL, to check what was (not) written."""
    engine = create_engine(postgres_server.dsn)
    yield engine
    await engine.dispose()
