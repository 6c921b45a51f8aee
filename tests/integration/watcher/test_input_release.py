"""The watcher service releases an ended job's secret inputs at once, and leaves its workloads.

Against each backend: the local runner, and the Kubernetes runner on kmock's
emulator with the simulated kubelet. The module has a nats-server and a database of
its own, so the watcher sees only the jobs made here; the jobs are driven through
the event store as the gateway and dispatcher would, and their workloads are made
with the runner as the dispatcher would. Each job has a lost first attempt whose
workload still runs, holding its inputs, as one cut off from the cluster may.
"""

from __future__ import annotations

import asyncio
import functools
import shutil
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID, uuid4

import pytest
from sqlalchemy import text

from ckrv.events.catalog import JobSubmittedData, RunnerBackend, workload_name
from ckrv.events.state import (
    ConfirmCancel,
    DispatchJob,
    JobCommand,
    JobStatus,
    MarkLost,
    QueueJob,
    RequestCancel,
    RetryJob,
    StartJob,
    SubmitJob,
    decide,
)
from ckrv.events.store import JobEventStore
from ckrv.events.streams import provision_streams
from ckrv.events.subjects import JOBS_STREAM
from ckrv.services.common.connections import connect_nats
from ckrv.services.common.db import create_schema
from ckrv.services.common.event_service import EventService
from ckrv.services.common.settings import CommonSettings
from ckrv.services.runners.backends import open_runner
from ckrv.services.runners.base import Runner, WorkloadState
from ckrv.services.runners.local_folder import WorkloadFolder
from ckrv.services.runners.settings import RunnerSettings, SandboxMode
from ckrv.services.stack.nats_server import NatsServer
from ckrv.services.stack.ports import free_ports
from ckrv.services.stack.postgres_server import PostgresServer
from ckrv.services.stack.seaweed_server import SeaweedServer
from ckrv.services.watcher.input_release import input_release_spec
from ckrv.services.watcher.service import watcher_work
from ckrv.services.watcher.settings import WatcherSettings
from tests.conftest import new_server_dir
from tests.kubelet import SECRETS, SimulatedCluster, cluster
from tests.runner_contract import Gate, finished, output_of, python_request, running

pytestmark = pytest.mark.integration
__all__ = ["cluster"]

TESTS = "service:tests"
PATIENCE_SECONDS = 30.0
SUBMISSION = JobSubmittedData(
    user_id="u_inputs",
    tier="pro",
    spec_id="add-rate-limiter",
    spec_content="# Add a rate limiter\n",
    git_repo_url="https://git.example.com/acme/orders.git",
    git_base_branch="main",
    time_limit_seconds=600,
    max_attempts=3,
)


@dataclass(frozen=True)
class Backend:
    """A runner backend as the watcher is configured for it, and where it keeps inputs."""

    settings: RunnerSettings
    input_files_present: Callable[[str], bool]


@pytest.fixture(scope="module")
def nats_dir() -> Iterator[Path]:
    path = new_server_dir("ckrv-input-release-")
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
    database = f"input_release_{uuid4().hex[:12]}"
    async with postgres_server.connect("postgres") as connection:
        await connection.execute(text(f'CREATE DATABASE "{database}"'))
    database_url = postgres_server.dsn.rsplit("/", 1)[0] + f"/{database}"
    await create_schema(database_url)
    nc = await connect_nats(nats.url, name="input-release-tests")
    await provision_streams(nc.jetstream())
    # The watcher's consumer takes the ends appended after its creation: made here, before
    # any job, it cannot miss one appended while a test's watcher is still starting.
    await nc.jetstream().add_consumer(JOBS_STREAM, input_release_spec().config())
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
    nc = await connect_nats(common.nats_url, name="input-release-tests")
    yield JobEventStore(nc)
    await nc.close()


@pytest.fixture(params=[RunnerBackend.LOCAL, RunnerBackend.KUBERNETES])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param is RunnerBackend.LOCAL:
        root = tmp_path / "runner"
        return Backend(
            RunnerSettings(root=root, sandbox=SandboxMode.OFF),
            lambda name: WorkloadFolder(root / name).input_dir.exists(),
        )
    simulated: SimulatedCluster = request.getfixturevalue("cluster")
    namespace = f"test-{uuid4().hex[:12]}"
    return Backend(
        RunnerSettings(
            backend=RunnerBackend.KUBERNETES,
            kubernetes_kubeconfig=simulated.kubeconfig,
            kubernetes_namespace=namespace,
            kubernetes_poll_interval_seconds=0.02,
        ),
        lambda name: simulated.emulator.find(SECRETS, namespace, name) is not None,
    )


@pytest.fixture
async def runner(backend: Backend) -> AsyncIterator[Runner]:
    """The backend's runner, for the tests to make workloads as the dispatcher would."""
    async with open_runner(backend.settings) as opened:
        yield opened
        for status in await opened.list():
            await opened.delete(status.name)


@asynccontextmanager
async def watcher_running(common: CommonSettings, backend: Backend) -> AsyncIterator[None]:
    """The watcher service, as `ckrv-cloud serve watcher` runs it, on `backend`."""
    service = EventService(
        "watcher",
        common,
        lambda connections: watcher_work(connections, WatcherSettings(), backend.settings),
    )
    await service.start()
    stop = asyncio.Event()
    serving = asyncio.create_task(service.run(stop))
    try:
        yield
    finally:
        stop.set()
        await serving
        await service.close()


async def drive(store: JobEventStore, job_id: UUID, *commands: JobCommand) -> None:
    for command in commands:
        await store.execute(job_id, functools.partial(decide, command=command))


async def dispatched(
    store: JobEventStore, runner: Runner, job_id: UUID, attempt: int, code: str
) -> str:
    """Queue and dispatch the job's next attempt, its workload running `code`; its name."""
    await drive(
        store, job_id, QueueJob(actor=TESTS), DispatchJob(actor=TESTS, runner=runner.backend)
    )
    request = python_request(
        code, job_id=job_id, attempt=attempt, input_files={"credential": b"s3cret"}
    )
    await runner.create(request)
    return request.name


async def job_with_a_lost_attempt(store: JobEventStore, runner: Runner, gate: Gate) -> UUID:
    """A job on its second attempt, queued; the first's workload runs on, waiting at `gate`."""
    job_id = uuid4()
    await drive(store, job_id, SubmitJob(actor=TESTS, submission=SUBMISSION))
    await dispatched(store, runner, job_id, 1, gate.wait_code())
    await gate.arrival()
    await drive(
        store,
        job_id,
        StartJob(actor=TESTS, attempt=1),
        MarkLost(actor=TESTS, attempt=1, reason="node unreachable"),
        RetryJob(actor=TESTS, attempt=1),
    )
    return job_id


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + PATIENCE_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"not within {PATIENCE_SECONDS} s: {what}"
        await asyncio.sleep(0.05)


async def test_an_end_the_watcher_records_releases_every_attempts_inputs(
    common: CommonSettings, store: JobEventStore, runner: Runner, backend: Backend
) -> None:
    async with Gate() as lost_gate, Gate() as second_gate:
        job_id = await job_with_a_lost_attempt(store, runner, lost_gate)
        first = workload_name(job_id, 1)
        second = await dispatched(
            store, runner, job_id, 2, f"{second_gate.wait_code()}print('failing')\nexit(1)\n"
        )
        await second_gate.arrival()
        await drive(store, job_id, StartJob(actor=TESTS, attempt=2))
        assert backend.input_files_present(first)
        assert backend.input_files_present(second)

        async with watcher_running(common, backend):
            await second_gate.open()  # the attempt fails, and the watcher records it
            await until(
                lambda: not any(map(backend.input_files_present, (first, second))),
                "both attempts' inputs released",
            )

        state = (await store.load(job_id)).state
        assert state.status is JobStatus.FAILED
        assert state.error_code == "job_failed"
        # The workloads stay: the lost one runs on, the failed one keeps its status and output.
        assert (await running(runner, first)).state is WorkloadState.RUNNING
        assert (await finished(runner, second)).exit_code == 1
        assert await output_of(runner, second) == b"failing\n"


async def test_an_end_another_service_records_releases_the_inputs_too(
    common: CommonSettings, store: JobEventStore, runner: Runner, backend: Backend
) -> None:
    async with Gate() as lost_gate:
        job_id = await job_with_a_lost_attempt(store, runner, lost_gate)
        first = workload_name(job_id, 1)
        await drive(store, job_id, QueueJob(actor=TESTS))
        assert backend.input_files_present(first)

        async with watcher_running(common, backend):
            # Cancelled while its second attempt waits: the dispatcher records that end.
            await drive(
                store,
                job_id,
                RequestCancel(actor="user:u_inputs", reason="wrong spec"),
                ConfirmCancel(actor="service:dispatcher"),
            )
            await until(lambda: not backend.input_files_present(first), "inputs released")

        assert (await store.load(job_id)).state.status is JobStatus.CANCELLED
        assert (await running(runner, first)).state is WorkloadState.RUNNING
