"""Jobs on the local runner: how soon a job is dispatched and its worker speaks; 100 at once.

The whole local stack runs as `ckrv-cloud up` runs it (`python -m ckrv.services.stack` on
free loopback ports, its own NATS, PostgreSQL and SeaweedFS, every service, workloads
sandboxed with bubblewrap when it works here). Jobs clone a sample repository from a
folder the sandbox may read, and their `script` agent writes one file.

- One at a time: SEQUENTIAL_JOBS jobs of one enterprise user, each submitted once the
  previous one ended, so each finds an idle machine and nobody queued before it (a few
  warm-up jobs first). From the moment just before `POST /v1/jobs`:
  - dispatched: until `job.dispatched` arrives on a NATS subscription to `jobs.>`, made
    before anything is submitted;
  - first worker line: until the first byte of the workload's output (the worker's
    `{"event": "started", ...}` line) is in its folder, polled every millisecond;
  - and the way between them (`STAGES`), from the times the runner's folder records.
- All at once: BURST_JOBS jobs from BURST_USERS enterprise users (25 running jobs each,
  so together they fill the dispatcher's default capacity of 100), all submitted at once;
  then each job's stages from its own submission (arrival of `job.dispatched`,
  `job.started`, `job.succeeded`), how many succeeded, how many were lost, and the wall
  time from the first submission to the last end.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import nats
from nats.aio.msg import Msg

from ckrv.events.catalog import workload_name
from ckrv.schemas.api import SubscriptionTier
from ckrv.services.common.db import session_factory, temporary_engine
from ckrv.services.dispatcher.settings import DispatcherSettings
from ckrv.services.gateway.identity.administration import create_user
from ckrv.services.runners.local import LocalRunner
from ckrv.services.runners.local_folder import WorkloadFolder
from ckrv.services.runners.sandbox import find_bubblewrap
from ckrv.services.runners.settings import SandboxMode
from ckrv.services.stack.launcher import STACK_FILE
from tests.git_servers import create_sample_repository
from tests.perf.report import BenchmarkResult, Figure, latency_figures
from tests.stack_settings import cli_arguments, free_port_settings

WARM_UP_JOBS = 3
SEQUENTIAL_JOBS = 100
BURST_JOBS = 100
BURST_USERS = 4
SCRIPT = ["echo done > DONE.md"]
SPEC = json.dumps(
    {"id": "bench-execution", "overview": "Write DONE.md to show the job ran.", "script": SCRIPT}
)
# Event subject tokens (`jobs.<id>.<token>`) that end a job.
ENDS = frozenset({"succeeded", "failed", "timed-out", "cancelled", "rejected"})
OUTPUT_POLL_SECONDS = 0.001
STACK_READY_SECONDS = 120.0
STACK_STOP_SECONDS = 30.0
JOB_END_SECONDS = 120.0
BURST_END_SECONDS = 600.0

# One job's way, as (from, to) moments: first from its submission, then stage by stage
# from its dispatch (the runner's folder records when it wrote the workload and when the
# supervisor spawned the command) to the worker's first line.
STAGES = (
    ("submit", "job.dispatched"),
    ("submit", "first worker line"),
    ("submit", "job.started"),
    ("submit", "job.succeeded"),
    ("job.dispatched", "workload created"),
    ("workload created", "command spawned"),
    ("command spawned", "first worker line"),
)
# (p50, p99) targets in milliseconds.
TARGETS_MS: dict[tuple[str, str], tuple[float | None, float | None]] = {
    ("submit", "job.dispatched"): (None, 150.0),
    ("submit", "first worker line"): (300.0, 600.0),
}


@dataclass(frozen=True)
class LocalStack:
    gateway_api_url: str
    nats_url: str
    database_url: str
    runner_root: Path
    repository: str


@contextlib.asynccontextmanager
async def local_stack() -> AsyncIterator[LocalStack]:
    """The local stack in a throw-away folder, with a sample repository its workloads can read."""
    base = Path(tempfile.mkdtemp(prefix="ckrv-bench-execution-"))
    # PostgreSQL runs as `nobody` when the benchmark runs as root: it must pass through.
    base.chmod(0o711)
    repositories = base / "repositories"
    repositories.mkdir()
    sample = create_sample_repository(repositories, "sample")
    settings = free_port_settings(base / "state")
    log_path = base / "stack.log"
    with log_path.open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ckrv.services.stack",
            *cli_arguments(settings),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            # The services inherit it: the sandbox hides /tmp, where the repository is.
            env=os.environ
            | {"CKRV_RUNNER_SANDBOX_READ_ONLY_PATHS": json.dumps([str(repositories)])},
        )
    runner_root = settings.state_dir.absolute() / "runner"
    try:
        endpoints = await _stack_ready(settings.state_dir / STACK_FILE, process, log_path)
        yield LocalStack(
            gateway_api_url=f"{endpoints['services']['gateway']['url']}/v1",
            nats_url=endpoints["nats"]["url"],
            database_url=endpoints["postgres"]["dsn"],
            runner_root=runner_root,
            repository=str(sample.path),
        )
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), STACK_STOP_SECONDS)
        except TimeoutError:
            process.kill()
            await process.wait()
        # Workloads outlive the stack by design; a benchmark's must not outlive the benchmark.
        if runner_root.exists():
            async with LocalRunner(runner_root, sandbox=SandboxMode.OFF) as runner:
                await asyncio.gather(
                    *(runner.delete(status.name) for status in await runner.list())
                )
        shutil.rmtree(base, ignore_errors=True)


async def _stack_ready(
    stack_file: Path, process: asyncio.subprocess.Process, log_path: Path
) -> dict[str, Any]:
    deadline = time.monotonic() + STACK_READY_SECONDS
    while not stack_file.exists():
        if process.returncode is not None:
            raise RuntimeError(
                f"the local stack exited with {process.returncode}:\n{log_path.read_text()}"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(f"the local stack was not ready in {STACK_READY_SECONDS:g} s")
        await asyncio.sleep(0.1)
    endpoints: dict[str, Any] = json.loads(stack_file.read_text())
    return endpoints


class EventArrivals:
    """When each job's events arrived, from a NATS subscription to every JOBS subject."""

    def __init__(self) -> None:
        self.arrived: dict[UUID, dict[str, float]] = defaultdict(dict)
        self._changed = asyncio.Condition()

    async def note(self, message: Msg) -> None:
        _, job_id, token = message.subject.split(".")
        # The first of each kind: a job announces several phase changes, for one.
        self.arrived[UUID(job_id)].setdefault(token, time.perf_counter())
        async with self._changed:
            self._changed.notify_all()

    async def first_of(self, job_id: UUID, tokens: Iterable[str], within: float) -> str:
        """The first of `tokens` (`dispatched`, `succeeded` …) to have arrived for the job."""
        wanted = set(tokens)

        def seen() -> list[str]:
            arrived = self.arrived[job_id]
            return sorted(wanted & arrived.keys(), key=arrived.__getitem__)

        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(seen)
        return seen()[0]

    def since(self, job_id: UUID, token: str, submitted: float) -> float | None:
        arrived = self.arrived[job_id].get(token)
        return None if arrived is None else arrived - submitted


async def enterprise_tokens(database_url: str, count: int) -> list[str]:
    """API tokens of `count` new enterprise users."""
    tokens = []
    async with (
        temporary_engine(database_url) as engine,
        session_factory(engine)() as session,
        session.begin(),
    ):
        for n in range(count):
            _, token = await create_user(
                session, f"bench-{n}@example.com", SubscriptionTier.ENTERPRISE, with_token=True
            )
            assert token is not None
            tokens.append(token)
    return tokens


async def submit(client: httpx.AsyncClient, repository: str) -> tuple[UUID, float]:
    """Submit a job; its id and the moment just before the request went out."""
    submitted = time.perf_counter()
    response = await client.post(
        "/jobs",
        json={"spec_content": SPEC, "git_repo_url": repository, "git_base_branch": "main"},
    )
    if response.status_code != 201:
        raise RuntimeError(f"submission refused: {response.status_code} {response.text}")
    return UUID(response.json()["id"]), submitted


def output_path(stack: LocalStack, job_id: UUID) -> Path:
    return WorkloadFolder(stack.runner_root / workload_name(job_id, 1)).output_path


async def first_output_byte(path: Path) -> float:
    """When the output file first holds a byte (polled; the workload may not exist yet)."""
    while True:
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_size:
                return time.perf_counter()
        await asyncio.sleep(OUTPUT_POLL_SECONDS)


def on_perf_clock(moment: datetime) -> float:
    """A wall-clock time (the runner records those) on `time.perf_counter`'s scale."""
    return moment.timestamp() - (time.time() - time.perf_counter())


@dataclass
class OneAtATime:
    """Seconds per measured job by stage (`STAGES`), and whether the workloads were sandboxed."""

    stages: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    sandboxed: bool = False


async def one_at_a_time(
    stack: LocalStack, client: httpx.AsyncClient, arrivals: EventArrivals
) -> OneAtATime:
    measured = OneAtATime()
    for n in range(WARM_UP_JOBS + SEQUENTIAL_JOBS):
        job_id, submitted = await submit(client, stack.repository)
        path = output_path(stack, job_id)
        if path.exists() and path.stat().st_size:
            raise RuntimeError(f"job {job_id} wrote output before its submission was answered")
        first_line = asyncio.create_task(first_output_byte(path))
        end = await arrivals.first_of(job_id, ENDS, JOB_END_SECONDS)
        if end != "succeeded":
            first_line.cancel()
            job = (await client.get(f"/jobs/{job_id}")).json()
            raise RuntimeError(f"job {job_id} {end}: {job.get('error_message')}")
        folder = WorkloadFolder(path.parent)
        record = folder.read_status()
        assert record.started_at is not None, f"job {job_id} succeeded without starting"
        moments = {
            "submit": submitted,
            **{f"job.{token}": at for token, at in arrivals.arrived[job_id].items()},
            "workload created": on_perf_clock(record.created_at),
            "command spawned": on_perf_clock(record.started_at),
            "first worker line": await first_line,
        }
        if n == 0:
            measured.sandboxed = folder.read_launch_plan().sandboxed
        if n >= WARM_UP_JOBS:
            for start, stop in STAGES:
                measured.stages[f"{start} to {stop}"].append(moments[stop] - moments[start])
    return measured


@dataclass
class AllAtOnce:
    submitted: dict[UUID, float]
    ends: dict[UUID, str]
    submitting_seconds: float
    wall_seconds: float


async def all_at_once(
    stack: LocalStack, clients: list[httpx.AsyncClient], arrivals: EventArrivals
) -> AllAtOnce:
    """BURST_JOBS jobs, round the users, submitted together; waits for every one to end."""
    began = time.perf_counter()
    submissions = await asyncio.gather(
        *(submit(clients[n % len(clients)], stack.repository) for n in range(BURST_JOBS))
    )
    submitting_seconds = time.perf_counter() - began
    submitted = dict(submissions)
    ends: dict[UUID, str] = {}

    async def wait_for_end(job_id: UUID) -> None:
        with contextlib.suppress(TimeoutError):
            ends[job_id] = await arrivals.first_of(job_id, ENDS, BURST_END_SECONDS)

    await asyncio.gather(*(wait_for_end(job_id) for job_id in submitted))
    last_end = max(
        (arrivals.arrived[job_id][end] for job_id, end in ends.items()), default=time.perf_counter()
    )
    return AllAtOnce(submitted, ends, submitting_seconds, last_end - began)


def stage_figures(burst: AllAtOnce, arrivals: EventArrivals) -> list[Figure]:
    figures = []
    for token in ("dispatched", "started", "succeeded"):
        samples = [
            since
            for job_id, submitted in burst.submitted.items()
            if (since := arrivals.since(job_id, token, submitted)) is not None
        ]
        if samples:
            figures += latency_figures(
                f"{BURST_JOBS} at once: submit to job.{token}", samples, None
            )
    return figures


async def measure(stack: LocalStack) -> tuple[OneAtATime, AllAtOnce, EventArrivals]:
    tokens = await enterprise_tokens(stack.database_url, BURST_USERS)
    clients = [
        httpx.AsyncClient(
            base_url=stack.gateway_api_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )
        for token in tokens
    ]
    arrivals = EventArrivals()
    connection = await nats.connect(stack.nats_url)
    try:
        await connection.subscribe("jobs.>", cb=arrivals.note)
        # Round trip: the server has the subscription before the first submission.
        await connection.flush()
        sequential = await one_at_a_time(stack, clients[0], arrivals)
        burst = await all_at_once(stack, clients, arrivals)
    finally:
        await connection.close()
        for client in clients:
            await client.aclose()
    return sequential, burst, arrivals


def one_at_a_time_figures(measured: OneAtATime) -> list[Figure]:
    figures = []
    for start, stop in STAGES:
        p50_target, p99_target = TARGETS_MS.get((start, stop), (None, None))
        p50, *rest = latency_figures(
            f"one at a time: {start} to {stop}", measured.stages[f"{start} to {stop}"], p99_target
        )
        figures += [dataclasses.replace(p50, target=p50_target), *rest]
    return figures


async def run() -> BenchmarkResult:
    async with local_stack() as stack:
        sequential, burst, arrivals = await measure(stack)
    succeeded = sum(end == "succeeded" for end in burst.ends.values())
    lost = sum("lost" in arrivals.arrived[job_id] for job_id in burst.submitted)
    figures = [
        *one_at_a_time_figures(sequential),
        Figure(f"{BURST_JOBS} at once: succeeded", succeeded, "jobs", target=BURST_JOBS),
        Figure(f"{BURST_JOBS} at once: lost", lost, "jobs", target=0, higher_is_better=False),
        Figure(
            f"{BURST_JOBS} at once: submitting all",
            burst.submitting_seconds,
            "s",
            higher_is_better=False,
        ),
        Figure(
            f"{BURST_JOBS} at once: first submission to last end",
            burst.wall_seconds,
            "s",
            higher_is_better=False,
        ),
        *stage_figures(burst, arrivals),
    ]
    return BenchmarkResult(
        name="execution",
        description=(
            "Jobs with a script agent on the local stack's local runner: submit to "
            "job.dispatched and to the worker's first output line one job at a time, and "
            f"{BURST_JOBS} jobs from {BURST_USERS} users at once."
        ),
        figures=figures,
        parameters={
            "warm_up_jobs": WARM_UP_JOBS,
            "sequential_jobs": SEQUENTIAL_JOBS,
            "burst_jobs": BURST_JOBS,
            "burst_users": BURST_USERS,
            "tier": SubscriptionTier.ENTERPRISE.value,
            "dispatcher_capacity": DispatcherSettings.model_fields["capacity"].default,
            "script": SCRIPT,
            "sandboxed": sequential.sandboxed,
            "bubblewrap_installed": shutil.which("bwrap") is not None,
            "bubblewrap_usable": find_bubblewrap() is not None,
            "output_poll_seconds": OUTPUT_POLL_SECONDS,
        },
    )
