"""The notifier on servers of its own: a nats-server, a database and a gateway beside it.

The webhook tests' events never reach another test's consumers, nor theirs the
notifier. Users, endpoints and jobs are made through the gateway's API; jobs are
then driven to their end through the event store, as the dispatcher and watcher
would. A notifier runs in the test's process (`running_notifier`, with settings
the test chooses), or as `ckrv-cloud serve notifier` where it must be killed.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
from nats.aio.client import Client
from sqlalchemy import text

from ckrv.events.store import JobEventStore
from ckrv.services.common.connections import connect_nats
from ckrv.services.common.db import create_schema
from ckrv.services.common.event_service import EventService
from ckrv.services.common.settings import CommonSettings
from ckrv.services.notifier.service import Notifier, notifier_work
from ckrv.services.notifier.settings import NotifierSettings
from ckrv.services.stack.nats_server import NatsServer
from ckrv.services.stack.ports import free_ports
from ckrv.services.stack.postgres_server import PostgresServer
from tests.conftest import new_server_dir
from tests.integration.gateway.jobs import job_body
from tests.integration.gateway.lifecycle import start, succeed
from tests.running_gateway import RunningGateway, started_gateway

# After a rotation, how long the previous secret signs too: long enough for a ping sent at
# once to be signed by both, short enough to wait for its end.
SECRET_GRACE_SECONDS = 4.0
# Retries a test can wait for: the notifier looks for due deliveries this often.
FAST_RETRIES = (0.05, 0.1, 0.1)
FAST: dict[str, Any] = {"poll_interval_seconds": 0.05, "retry_delays_seconds": FAST_RETRIES}


@dataclass(frozen=True)
class WebhookStack:
    gateway: RunningGateway
    nats_url: str
    database_url: str
    nc: Client

    @property
    def store(self) -> JobEventStore:
        return JobEventStore(self.nc)

    def common(self) -> CommonSettings:
        return CommonSettings(env="dev", nats_url=self.nats_url, database_url=self.database_url)

    def client(self, email: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.gateway.api_url,
            headers={"Authorization": f"Bearer {self.gateway.token(email, 'pro')}"},
            timeout=30,
        )

    def environment(self) -> dict[str, str]:
        """What `ckrv-cloud serve notifier` needs to run on these servers."""
        return {
            "CKRV_ENV": "dev",
            "CKRV_NATS_URL": self.nats_url,
            "CKRV_DATABASE_URL": self.database_url,
        }


@pytest.fixture(scope="session")
def webhook_servers_dir() -> Iterator[Path]:
    path = new_server_dir("ckrv-webhooks-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
async def webhook_stack(
    webhook_servers_dir: Path, postgres_server: PostgresServer
) -> AsyncIterator[WebhookStack]:
    port, monitor_port = free_ports(2)
    nats = NatsServer(webhook_servers_dir / "nats", port=port, monitor_port=monitor_port)
    await nats.start()
    database = f"webhooks_{uuid4().hex[:12]}"
    async with postgres_server.connect("postgres") as connection:
        await connection.execute(text(f'CREATE DATABASE "{database}"'))
    database_url = postgres_server.dsn.rsplit("/", 1)[0] + f"/{database}"
    await create_schema(database_url)
    try:
        async with started_gateway(
            nats_url=nats.url,
            database_url=database_url,
            switches={"CKRV_WEBHOOKS_PREVIOUS_SECRET_GRACE_SECONDS": f"{SECRET_GRACE_SECONDS:g}"},
        ) as gateway:
            nc = await connect_nats(nats.url, name="webhook-tests")
            try:
                yield WebhookStack(gateway, nats.url, database_url, nc)
            finally:
                await nc.close()
    finally:
        await nats.stop()


@pytest.fixture
async def user(webhook_stack: WebhookStack) -> AsyncIterator[httpx.AsyncClient]:
    """An API client of a new user.

    Asynchronous: a request must not stop the loop the notifier runs on, as the gateway
    may be waiting for a row that notifier holds.
    """
    async with webhook_stack.client(f"hooks-{uuid4().hex[:12]}@example.com") as client:
        yield client


@asynccontextmanager
async def running_notifier(stack: WebhookStack, **settings: Any) -> AsyncIterator[Notifier]:
    """A notifier service in this process, on the stack's servers, until the block ends."""
    chosen = NotifierSettings(env="dev", **settings)
    service = EventService(
        "notifier", stack.common(), lambda connections: notifier_work(connections, chosen)
    )
    await service.start()
    assert isinstance(service.work, Notifier)
    stop = asyncio.Event()
    running = asyncio.create_task(service.run(stop))
    try:
        yield service.work
    finally:
        stop.set()
        await running
        await service.close()


async def wait_until(
    condition: Callable[[], Awaitable[bool]], what: str, within: float = 30.0
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await condition():
        assert loop.time() < deadline, f"{what}: not within {within} s"
        await asyncio.sleep(0.02)


async def add_webhook(client: httpx.AsyncClient, url: str, **fields: Any) -> dict[str, Any]:
    """A new endpoint, with its `secret`."""
    response = await client.post("/webhooks", json={"url": url} | fields)
    assert response.status_code == 201, response.text
    webhook: dict[str, Any] = response.json()
    return webhook


async def submit(client: httpx.AsyncClient) -> UUID:
    response = await client.post("/jobs", json=job_body())
    assert response.status_code == 201, response.text
    return UUID(response.json()["id"])


async def complete(stack: WebhookStack, job_id: UUID) -> None:
    """Queue, start and succeed the job."""
    await start(stack.store, job_id)
    await succeed(stack.store, job_id)


async def finish(stack: WebhookStack, client: httpx.AsyncClient) -> UUID:
    """A new job of the client's user, queued, started and succeeded."""
    job_id = await submit(client)
    await complete(stack, job_id)
    return job_id


async def event_id(client: httpx.AsyncClient, job_id: UUID, event_type: str) -> str:
    events = (await client.get(f"/jobs/{job_id}/events")).json()["events"]
    (found,) = [event["id"] for event in events if event["type"] == event_type]
    return str(found)


async def deliveries(client: httpx.AsyncClient, webhook_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"/webhooks/{webhook_id}/deliveries", params={"limit": 100})
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["deliveries"]
    return found


async def webhook(client: httpx.AsyncClient, webhook_id: str) -> dict[str, Any]:
    response = await client.get(f"/webhooks/{webhook_id}")
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found
