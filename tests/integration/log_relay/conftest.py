"""A log-relay over a local runner of the test's own, on the session's NATS, database and S3.

Workloads are small Python programs printing what a worker or an agent would;
jobs, where a test needs one, are created through the event store as the gateway
and dispatcher do, so the workload's name is the one the job expects.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from uuid import UUID, uuid4

import httpx
import pytest
from nats.aio.client import Client
from nats.js.errors import NotFoundError
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from sqlalchemy import text

from ckrv.events.catalog import JobEvent, JobSubmittedData, RunnerBackend
from ckrv.events.state import DispatchJob, JobCommand, QueueJob, SubmitJob, decide
from ckrv.events.store import JobEventStore
from ckrv.events.streams import provision_streams
from ckrv.events.subjects import LOGS_STREAM, job_log_subject
from ckrv.schemas.api import GitCredentialType, GitProvider
from ckrv.schemas.logs import LogEntry
from ckrv.services.common.connections import connect_nats
from ckrv.services.common.credentials import store_credential
from ckrv.services.common.db import create_engine, create_schema, session_factory
from ckrv.services.common.settings import DEVELOPMENT_CREDENTIAL_KEYS, CommonSettings
from ckrv.services.common.storage import artifact_key
from ckrv.services.log_relay.relay import LogRelay
from ckrv.services.log_relay.settings import LogRelaySettings
from ckrv.services.runners.base import WorkloadRequest, WorkloadStatus
from ckrv.services.runners.local import LocalRunner
from ckrv.services.stack.nats_server import NatsServer
from ckrv.services.stack.ports import free_ports
from ckrv.services.stack.postgres_server import PostgresServer
from ckrv.services.stack.seaweed_server import SeaweedServer
from ckrv.services.stack.service_process import ServiceProcess, connection_environment

pytestmark = pytest.mark.integration

TESTS = "service:tests"


@pytest.fixture(scope="module")
async def database_url(postgres_server: PostgresServer) -> str:
    """A database of the module's own: a relay takes on every workload its table names."""
    database = f"log_relay_{uuid4().hex[:12]}"
    async with postgres_server.connect("postgres") as connection:
        await connection.execute(text(f'CREATE DATABASE "{database}"'))
    url = postgres_server.dsn.rsplit("/", 1)[0] + f"/{database}"
    await create_schema(url)
    return url


@pytest.fixture(scope="module")
async def common(
    nats_server: NatsServer, database_url: str, s3_server: SeaweedServer
) -> CommonSettings:
    """The relay's settings, with the session's servers ready for it."""
    nc = await connect_nats(nats_server.url, name="log-relay-tests")
    try:
        await provision_streams(nc.jetstream())
    finally:
        await nc.close()
    return CommonSettings(
        env="dev",
        nats_url=nats_server.url,
        database_url=database_url,
        s3_endpoint=s3_server.endpoint,
        s3_access_key=s3_server.access_key,
        s3_secret_key=s3_server.secret_key,
        s3_region=s3_server.region,
        s3_bucket=s3_server.bucket,
    )


@pytest.fixture
async def nc(common: CommonSettings) -> AsyncIterator[Client]:
    client = await connect_nats(common.nats_url, name="log-relay-tests")
    yield client
    await client.close()


@pytest.fixture
async def runner(tmp_path: Path) -> AsyncIterator[LocalRunner]:
    async with LocalRunner(tmp_path / "runner") as local:
        yield local
        # Workloads outlive whoever made them, by design; a test's must not outlive the test.
        await asyncio.gather(*(local.delete(status.name) for status in await local.list()))


@asynccontextmanager
async def running_relay(common: CommonSettings, runner: LocalRunner) -> AsyncIterator[LogRelay]:
    """A relay in this process, following `runner`'s workloads until the block ends."""
    nc = await connect_nats(common.nats_url, name="log-relay")
    engine = create_engine(common.database_url.get_secret_value())
    relay = LogRelay(
        common=common,
        settings=LogRelaySettings(retry_delay_seconds=0.2),
        nc=nc,
        sessions=session_factory(engine),
        runner=runner,
    )
    stop = asyncio.Event()
    running = asyncio.create_task(relay.run(stop))
    try:
        yield relay
    finally:
        stop.set()
        await running
        await nc.close()
        await engine.dispose()


@pytest.fixture
def runner_root(tmp_path: Path) -> Path:
    """The folder of the test's local runner, for relay processes to follow it."""
    return tmp_path / "runner"


@pytest.fixture
def relay_environment(
    common: CommonSettings,
    nats_server: NatsServer,
    postgres_server: PostgresServer,
    s3_server: SeaweedServer,
    runner_root: Path,
) -> dict[str, str]:
    """What a `ckrv-cloud serve log-relay` process needs to follow the test's runner."""
    return {
        **connection_environment(
            nats_server, postgres_server, s3_server, credential_keys=DEVELOPMENT_CREDENTIAL_KEYS
        ),
        "CKRV_DATABASE_URL": common.database_url.get_secret_value(),
        "CKRV_RUNNER_ROOT": str(runner_root),
    }


def relay_process(
    environment: dict[str, str], log_dir: Path, *, lease_ttl_seconds: float
) -> ServiceProcess:
    """A relay process (not started yet), logging to `log_dir`."""
    (port,) = free_ports(1)
    return ServiceProcess(
        "log-relay",
        port=port,
        log_dir=log_dir,
        connections={
            **environment,
            "CKRV_LOG_RELAY_LEASE_TTL_SECONDS": f"{lease_ttl_seconds:g}",
        },
        shutdown_timeout_seconds=5,
    )


def process_id(service: ServiceProcess) -> int:
    """The pid of a running service, also the id of its process group."""
    assert service.process is not None
    pid = service.process.pid
    assert pid is not None
    return pid


async def metric(service: ServiceProcess, sample: str) -> float:
    """The value of `sample` (e.g. `ckrv_log_relay_entries_total`) on the service's /metrics."""
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{service.url}/metrics")
    response.raise_for_status()
    for family in text_string_to_metric_families(response.text):
        for found in family.samples:
            if found.name == sample:
                return found.value
    raise AssertionError(f"no {sample} on {service.url}/metrics")


def python_workload(job_id: UUID, script: str, *, attempt: int = 1) -> WorkloadRequest:
    """A workload that runs `script` with this Python."""
    return WorkloadRequest(
        job_id=job_id,
        attempt=attempt,
        command=(sys.executable, "-c", script),
        time_limit_seconds=120,
    )


def worker_record(message: str, **fields: object) -> str:
    """One line as `ckrv-worker` prints it."""
    record = {
        "timestamp": "2026-11-27T12:00:00.000Z",
        "level": "info",
        "source": "worker",
        "message": message,
    } | fields
    return json.dumps(record)


def printing(*lines: str) -> str:
    """A script printing `lines` as they are, one per line."""
    return f"import sys\nsys.stdout.write(''.join(line + '\\n' for line in {list(lines)!r}))\n"


async def published(nc: Client, job_id: UUID) -> list[bytes]:
    """Every message on the job's log subject, in stream order."""
    js = nc.jetstream()
    subject = job_log_subject(job_id)
    messages: list[bytes] = []
    sequence = 1
    while True:
        try:
            message = await js.get_msg(LOGS_STREAM, seq=sequence, subject=subject, next=True)
        except NotFoundError:
            return messages
        assert message.data is not None
        assert message.seq is not None
        messages.append(message.data)
        sequence = message.seq + 1


async def wait_until(
    condition: Callable[[], Awaitable[object]], what: str, *, within: float = 30.0
) -> None:
    """Poll `condition` until it is true; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while not await condition():
        assert time.monotonic() < deadline, f"not within {within} s: {what}"
        await asyncio.sleep(0.05)


async def wait_until_finished(runner: LocalRunner, name: str) -> WorkloadStatus:
    while True:
        status = await runner.get(name)
        assert status is not None
        if status.is_finished:
            return status
        await asyncio.sleep(0.05)


def archive_bytes(s3: SeaweedServer, key: str) -> bytes | None:
    """The object at `key`, or None while there is none."""
    client = s3.client()
    try:
        response = client.get_object(s3.bucket, key)
    except Exception:  # minio's S3Error for a missing key
        return None
    try:
        return response.read()
    finally:
        response.close()
        response.release_conn()


async def output_lines(runner: LocalRunner, name: str) -> list[str]:
    """What the workload wrote, line by line."""
    output = b"".join([chunk.data async for chunk in runner.read_output(name, 0, follow=False)])
    return output.decode().splitlines()


def entries_of(messages: list[bytes]) -> list[LogEntry]:
    return [LogEntry.model_validate_json(message) for message in messages]


def log_key(job_id: UUID, attempt: int = 1) -> str:
    return artifact_key(job_id, attempt, "logs.jsonl")


async def wait_for_archive(s3: SeaweedServer, job_id: UUID, attempt: int = 1) -> bytes:
    key = log_key(job_id, attempt)
    await wait_until(
        lambda: asyncio.to_thread(archive_bytes, s3, key), f"{key} written to object storage"
    )
    content = archive_bytes(s3, key)
    assert content is not None
    return content


async def drive(store: JobEventStore, job_id: UUID, *commands: JobCommand) -> list[JobEvent]:
    """Append the events each command decides, one after the other."""
    for command in commands:
        await store.execute(job_id, functools.partial(decide, command=command))
    return [stored.event for stored in await store.read(job_id)]


async def dispatched_job(
    store: JobEventStore, *, user_id: UUID | None = None, credential_name: str | None = None
) -> UUID:
    """A new job, submitted, queued and dispatched to its first attempt's workload."""
    job_id = uuid4()
    submission = JobSubmittedData(
        user_id=str(user_id or uuid4()),
        tier="pro",
        spec_id="relay-logs",
        spec_content="# Print some lines\n",
        git_repo_url="https://git.example.com/acme/app.git",
        git_base_branch="main",
        git_credential_name=credential_name,
        time_limit_seconds=600,
        max_attempts=2,
    )
    await drive(
        store,
        job_id,
        SubmitJob(actor=TESTS, submission=submission),
        QueueJob(actor=TESTS),
        DispatchJob(actor=TESTS, runner=RunnerBackend.LOCAL),
    )
    return job_id


async def stored_pat(common: CommonSettings, user_id: UUID, name: str, value: str) -> None:
    engine = create_engine(common.database_url.get_secret_value())
    try:
        async with session_factory(engine)() as session, session.begin():
            stored = await store_credential(
                session,
                common.credential_key_ring(),
                user_id,
                name=name,
                provider=GitProvider.GITHUB,
                credential_type=GitCredentialType.PAT,
                value=SecretStr(value),
            )
        assert stored is not None
    finally:
        await engine.dispose()
