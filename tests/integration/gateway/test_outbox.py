"""An accepted job always gets its event: the outbox publishes it after NATS comes back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from uuid import uuid4

import pytest
from sqlalchemy import select
from sqlmodel import col

from ckrv.events.store import JobEventStore
from ckrv.events.streams import provision_streams
from ckrv.schemas.api import JobCreate
from ckrv.services.common.connections import connect_nats
from ckrv.services.common.db import create_engine, create_schema, session_factory
from ckrv.services.common.sealing import KeyRing
from ckrv.services.common.settings import DEVELOPMENT_CREDENTIAL_KEYS
from ckrv.services.gateway.context import GatewayContext
from ckrv.services.gateway.identity.config import load_identity
from ckrv.services.gateway.settings import GatewaySettings
from ckrv.services.gateway.submission import relay_pending, submit_job
from ckrv.services.gateway.tables import JobRecord, OutboxEvent, User
from ckrv.services.stack.nats_server import NatsServer
from ckrv.services.stack.ports import free_ports
from ckrv.services.stack.postgres_server import PostgresServer
from tests.integration.gateway.jobs import SPEC

pytestmark = pytest.mark.integration


@pytest.fixture
async def own_nats(server_tmp_path: Path) -> AsyncIterator[NatsServer]:
    """A nats-server this test may stop and start again."""
    port, monitor_port = free_ports(2)
    server = NatsServer(server_tmp_path, port=port, monitor_port=monitor_port)
    await server.start()
    yield server
    await server.stop()


async def wait_until(condition: object, within: float = 15.0) -> None:
    assert callable(condition)
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


@dataclass(frozen=True)
class Accepting:
    """A gateway's submission path wired to the test's own nats-server, and a user."""

    context: GatewayContext
    user: User


@pytest.fixture
async def accepting(
    own_nats: NatsServer, postgres_server: PostgresServer
) -> AsyncIterator[Accepting]:
    await create_schema(postgres_server.dsn)
    engine = create_engine(postgres_server.dsn)
    nc = await connect_nats(own_nats.url, name="outbox-test")
    try:
        await provision_streams(nc.jetstream())
        settings = GatewaySettings(env="dev", publish_timeout_seconds=0.5)
        keys, identity = load_identity(settings)
        context = GatewayContext(
            settings=settings,
            engine=engine,
            sessions=session_factory(engine),
            nats=nc,
            store=JobEventStore(nc),
            keys=keys,
            identity=identity,
            credential_keys=KeyRing.parse(DEVELOPMENT_CREDENTIAL_KEYS),
        )
        user = User(id=uuid4(), email=f"{uuid4().hex}@example.com", subscription_tier="pro")
        async with context.sessions() as session, session.begin():
            session.add(user)
        yield Accepting(context, user)
    finally:
        await nc.close()
        await engine.dispose()


async def test_a_job_accepted_while_nats_is_down_gets_its_event_exactly_once(
    own_nats: NatsServer, accepting: Accepting
) -> None:
    context, user = accepting.context, accepting.user

    # The publish step dies: JetStream is gone between the commit and the append.
    await own_nats.stop()
    body = JobCreate(spec_content=SPEC, git_repo_url="https://example.com/acme/app.git")
    submission = await submit_job(context, user.id, body, idempotency_key=None)
    job_id = submission.job.id
    assert submission.created

    async with context.sessions() as session:
        record = await session.get(JobRecord, job_id)
        pending = (
            await session.scalars(select(OutboxEvent).where(col(OutboxEvent.job_id) == job_id))
        ).one()
    # Accepted and readable, its event waiting in the outbox.
    assert record is not None
    assert record.status == "pending"
    assert pending.published_at is None

    await own_nats.start()
    await wait_until(lambda: context.nats.is_connected)
    assert await relay_pending(context, older_than=timedelta(0)) == 1
    assert await relay_pending(context, older_than=timedelta(0)) == 0

    history = await context.store.read(job_id)
    assert [stored.event.id for stored in history] == [pending.event_id]
    assert history[0].event.type == "job.submitted"
    async with context.sessions() as session:
        confirmed = await session.get(OutboxEvent, pending.event_id)
    assert confirmed is not None
    assert confirmed.published_at is not None


async def test_relaying_an_event_the_request_already_published_adds_nothing(
    accepting: Accepting,
) -> None:
    context, user = accepting.context, accepting.user
    body = JobCreate(spec_content=SPEC, git_repo_url="https://example.com/acme/app.git")
    job_id = (await submit_job(context, user.id, body, idempotency_key=None)).job.id
    async with context.sessions() as session, session.begin():
        # As if the process died after the append but before marking the row.
        outbox = (
            await session.scalars(select(OutboxEvent).where(col(OutboxEvent.job_id) == job_id))
        ).one()
        outbox.published_at = None
    assert await relay_pending(context, older_than=timedelta(0)) == 1
    assert len(await context.store.read(job_id)) == 1
