"""Connections to a real nats-server of these tests' own, with the streams provisioned."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from uuid import UUID, uuid4

import nats
import pytest
from nats.aio.client import Client

from ckrv.events.streams import provision_streams
from ckrv.services.stack.nats_server import NatsServer
from ckrv.services.stack.ports import free_ports
from tests.conftest import run_on_private_loop

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def events_nats_server(servers_dir: Path) -> Iterator[NatsServer]:
    """A nats-server of these tests' own. The events they append on purpose (users that are
    not UUIDs, several submissions of one job, undecodable payloads) stay off the JOBS
    stream that the gateway's projector folds and its rebuild test replays whole."""
    port, monitor_port = free_ports(2)
    server = NatsServer(servers_dir / "nats-events", port=port, monitor_port=monitor_port)
    run_on_private_loop(server.start())
    try:
        yield server
    finally:
        run_on_private_loop(server.stop())


@pytest.fixture(scope="session")
async def provisioned_nats_url(events_nats_server: NatsServer) -> str:
    nc = await nats.connect(events_nats_server.url)
    try:
        await provision_streams(nc.jetstream())
    finally:
        await nc.close()
    return str(events_nats_server.url)


@pytest.fixture
async def nc(provisioned_nats_url: str) -> AsyncIterator[Client]:
    client = await nats.connect(provisioned_nats_url)
    yield client
    await client.close()


@pytest.fixture
def job_id() -> UUID:
    return uuid4()
