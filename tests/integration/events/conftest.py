"""Connections to the session's real nats-server, with the streams provisioned, and job builders."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID, uuid4

import nats
import pytest
from nats.aio.client import Client

from ckrv.events.streams import provision_streams

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
async def provisioned_nats_url(nats_server: Any) -> str:
    nc = await nats.connect(nats_server.url)
    try:
        await provision_streams(nc.jetstream())
    finally:
        await nc.close()
    return str(nats_server.url)


@pytest.fixture
async def nc(provisioned_nats_url: str) -> AsyncIterator[Client]:
    client = await nats.connect(provisioned_nats_url)
    yield client
    await client.close()


@pytest.fixture
def job_id() -> UUID:
    return uuid4()
