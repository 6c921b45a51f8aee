"""The janitor on NATS, PostgreSQL and SeaweedFS: finished jobs' results go when they expire.

The module has a nats-server of its own, so the janitor sees only the jobs made
here and never deletes another test's objects in the session's bucket. Jobs are
made through the event store as the gateway, dispatcher and watcher would.
"""

from __future__ import annotations

import asyncio
import functools
import io
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from uuid import UUID, uuid4

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ckrv.events.catalog import (
    JobEvent,
    JobExpired,
    JobSubmittedData,
    JobSucceededData,
    RunnerBackend,
)
from ckrv.events.consumer import Delivery
from ckrv.events.state import (
    ConfirmCancel,
    DispatchJob,
    ExpireResults,
    JobCommand,
    MarkLost,
    QueueJob,
    RequestCancel,
    RetryJob,
    StartJob,
    SubmitJob,
    SucceedJob,
    decide,
)
from ckrv.events.store import JobEventStore
from ckrv.events.streams import provision_streams
from ckrv.services.artifacts.janitor import Janitor
from ckrv.services.artifacts.retention import ResultRetention
from ckrv.services.artifacts.service import artifacts_work
from ckrv.services.artifacts.settings import ArtifactsSettings
from ckrv.services.common.connections import connect_nats
from ckrv.services.common.db import create_engine, create_schema, session_factory
from ckrv.services.common.event_service import EventService
from ckrv.services.common.settings import CommonSettings
from ckrv.services.stack.nats_server import NatsServer
from ckrv.services.stack.ports import free_ports
from ckrv.services.stack.postgres_server import PostgresServer
from ckrv.services.stack.seaweed_server import SeaweedServer
from tests.conftest import new_server_dir

pytestmark = pytest.mark.integration

TESTS = "service:tests"
SUBMISSION = JobSubmittedData(
    user_id="u_janitor",
    tier="pro",
    spec_id="add-rate-limiter",
    spec_content="# Add a rate limiter\n",
    git_repo_url="https://git.example.com/acme/orders.git",
    git_base_branch="main",
    time_limit_seconds=600,
    max_attempts=3,
)
RESULTS = ("diff.patch", "repo.bundle", "result.json", "logs.jsonl")


@pytest.fixture(scope="module")
def nats_dir() -> Iterator[Path]:
    path = new_server_dir("ckrv-janitor-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
async def common(
    nats_dir: Path, postgres_server: PostgresServer, s3_server: SeaweedServer
) -> AsyncIterator[CommonSettings]:
    """Settings on a nats-server and a database of the module's own, and the session's S3."""
    port, monitor_port = free_ports(2)
    nats = NatsServer(nats_dir, port=port, monitor_port=monitor_port)
    await nats.start()
    database = f"janitor_{uuid4().hex[:12]}"
    async with postgres_server.connect("postgres") as connection:
        await connection.execute(text(f'CREATE DATABASE "{database}"'))
    database_url = postgres_server.dsn.rsplit("/", 1)[0] + f"/{database}"
    await create_schema(database_url)
    nc = await connect_nats(nats.url, name="janitor-tests")
    await provision_streams(nc.jetstream())
    await nc.close()
    try:
        yield CommonSettings(
            env="dev",
            nats_url=nats.url,
            database_url=database_url,
            s3_endpoint=s3_server.endpoint,
            s3_access_key=s3_server.access_key,
            s3_secret_key=s3_server.secret_key,
            s3_region=s3_server.region,
            s3_bucket=s3_server.bucket,
        )
    finally:
        await nats.stop()


@pytest.fixture
async def store(common: CommonSettings) -> AsyncIterator[JobEventStore]:
    nc = await connect_nats(common.nats_url, name="janitor-tests")
    yield JobEventStore(nc)
    await nc.close()


@pytest.fixture
async def sessions(common: CommonSettings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(common.database_url.get_secret_value())
    yield session_factory(engine)
    await engine.dispose()


async def drive(store: JobEventStore, job_id: UUID, *commands: JobCommand) -> None:
    for command in commands:
        await store.execute(job_id, functools.partial(decide, command=command))


def started(attempt: int) -> tuple[JobCommand, ...]:
    return (
        QueueJob(actor=TESTS),
        DispatchJob(actor=TESTS, runner=RunnerBackend.LOCAL),
        StartJob(actor=TESTS, attempt=attempt),
    )


async def running_job(store: JobEventStore) -> UUID:
    job_id = uuid4()
    await drive(store, job_id, SubmitJob(actor=TESTS, submission=SUBMISSION), *started(1))
    return job_id


async def job_that_succeeded_at_the_second_attempt(store: JobEventStore) -> UUID:
    job_id = await running_job(store)
    await drive(
        store,
        job_id,
        MarkLost(actor=TESTS, attempt=1, reason="node drained"),
        RetryJob(actor=TESTS, attempt=1),
        *started(2),
        SucceedJob(actor=TESTS, result=JobSucceededData(attempt=2, summary="Changed 1 file.")),
    )
    return job_id


def store_results(s3: SeaweedServer, job_id: UUID, *attempts: int) -> list[str]:
    """Every result of each attempt, stored as the worker and the log-relay would; the keys."""
    client = s3.client()
    keys = [f"jobs/{job_id}/{attempt}/{name}" for attempt in attempts for name in RESULTS]
    for key in keys:
        client.put_object(s3.bucket, key, io.BytesIO(key.encode()), len(key))
    return sorted(keys)


def stored_keys(s3: SeaweedServer, job_id: UUID) -> list[str]:
    listing = s3.client().list_objects(s3.bucket, prefix=f"jobs/{job_id}/", recursive=True)
    return sorted(item.object_name for item in listing if item.object_name)


async def expiries(store: JobEventStore, job_id: UUID) -> list[JobExpired]:
    return [
        stored.event for stored in await store.read(job_id) if isinstance(stored.event, JobExpired)
    ]


async def last_delivery(store: JobEventStore, job_id: UUID) -> Delivery[JobEvent]:
    """The job's last event as the janitor's consumer would hand it over."""
    last = (await store.read(job_id))[-1]
    subject = f"jobs.{job_id}.{last.event.type.removeprefix('job.')}"
    return Delivery(last.event, subject, last.sequence, num_delivered=1)


async def retention_row(
    sessions: async_sessionmaker[AsyncSession], job_id: UUID
) -> ResultRetention | None:
    async with sessions() as session:
        return await session.get(ResultRetention, job_id)


async def wait_until(condition: Callable[[], Awaitable[object]], what: str) -> None:
    deadline = time.monotonic() + 30
    while not await condition():
        assert time.monotonic() < deadline, f"not within 30 s: {what}"
        await asyncio.sleep(0.05)


def janitor(
    sessions: async_sessionmaker[AsyncSession], store: JobEventStore, s3: SeaweedServer
) -> Janitor:
    return Janitor(
        settings=ArtifactsSettings(),
        sessions=sessions,
        store=store,
        storage=s3.client(),
        bucket=s3.bucket,
    )


async def test_a_finished_jobs_results_go_at_expiry_and_a_running_jobs_stay(
    common: CommonSettings, store: JobEventStore, s3_server: SeaweedServer
) -> None:
    finished = await job_that_succeeded_at_the_second_attempt(store)
    running = await running_job(store)
    finished_keys = store_results(s3_server, finished, 1, 2)
    running_keys = store_results(s3_server, running, 1)
    settings = ArtifactsSettings(retention_seconds_override=0.5, expiry_interval_seconds=0.1)
    service = EventService(
        "artifacts", common, lambda connections: artifacts_work(connections, settings)
    )
    await service.start()
    stop = asyncio.Event()
    serving = asyncio.create_task(service.run(stop))
    try:
        await wait_until(lambda: expiries(store, finished), "job.expired appended")
    finally:
        stop.set()
        await serving
        await service.close()
    (expired,) = await expiries(store, finished)
    assert expired.actor == "service:artifacts"
    assert list(expired.data.keys) == finished_keys
    ended_at = (await store.load(finished)).state.completed_at
    assert ended_at is not None
    assert expired.data.expired_at >= ended_at + timedelta(seconds=0.5)  # not before its time
    assert stored_keys(s3_server, finished) == []
    assert (await store.load(finished)).state.expired_at == expired.data.expired_at
    assert stored_keys(s3_server, running) == running_keys
    assert (await store.load(running)).state.expired_at is None


async def test_results_are_kept_for_the_tiers_retention_after_the_job_ends(
    store: JobEventStore, sessions: async_sessionmaker[AsyncSession], s3_server: SeaweedServer
) -> None:
    job_id = await job_that_succeeded_at_the_second_attempt(store)
    keys = store_results(s3_server, job_id, 1, 2)
    ended_at = (await store.load(job_id)).state.completed_at
    assert ended_at is not None
    cleaner = janitor(sessions, store, s3_server)
    ended = await last_delivery(store, job_id)
    await cleaner.handle(ended)
    await cleaner.handle(ended)  # a redelivery changes nothing
    row = await retention_row(sessions, job_id)
    assert row is not None
    assert row.expires_at == ended_at + timedelta(days=7)  # the pro tier's retention

    await cleaner.expire_due(ended_at + timedelta(days=7) - timedelta(seconds=1))
    assert stored_keys(s3_server, job_id) == keys
    assert await expiries(store, job_id) == []

    expired_before = REGISTRY.get_sample_value("ckrv_artifacts_expired_jobs_total") or 0.0
    await cleaner.expire_due(ended_at + timedelta(days=7))
    assert stored_keys(s3_server, job_id) == []
    (expired,) = await expiries(store, job_id)
    assert list(expired.data.keys) == keys
    assert await retention_row(sessions, job_id) is None
    assert REGISTRY.get_sample_value("ckrv_artifacts_expired_jobs_total") == expired_before + 1

    await cleaner.handle(ended)  # the end replayed after the expiry
    assert await retention_row(sessions, job_id) is None


async def test_a_job_that_never_ran_a_workload_has_nothing_to_expire(
    store: JobEventStore, sessions: async_sessionmaker[AsyncSession], s3_server: SeaweedServer
) -> None:
    job_id = uuid4()
    await drive(
        store,
        job_id,
        SubmitJob(actor=TESTS, submission=SUBMISSION),
        QueueJob(actor=TESTS),
        RequestCancel(actor=TESTS),
        ConfirmCancel(actor=TESTS),
    )
    await janitor(sessions, store, s3_server).handle(await last_delivery(store, job_id))
    assert await retention_row(sessions, job_id) is None


async def test_an_expiry_recorded_before_a_crash_still_deletes_the_objects(
    store: JobEventStore, sessions: async_sessionmaker[AsyncSession], s3_server: SeaweedServer
) -> None:
    job_id = await job_that_succeeded_at_the_second_attempt(store)
    keys = store_results(s3_server, job_id, 2)
    cleaner = janitor(sessions, store, s3_server)
    await cleaner.handle(await last_delivery(store, job_id))
    row = await retention_row(sessions, job_id)
    assert row is not None
    # A janitor appended job.expired, then died before deleting anything.
    await drive(
        store, job_id, ExpireResults(actor=TESTS, expired_at=row.expires_at, keys=tuple(keys))
    )
    await cleaner.expire_due(row.expires_at)
    assert stored_keys(s3_server, job_id) == []
    assert len(await expiries(store, job_id)) == 1
    assert await retention_row(sessions, job_id) is None
