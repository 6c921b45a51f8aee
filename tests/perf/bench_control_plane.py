"""The control plane at scale on the Kubernetes runner: 1,000 jobs submitted, run and finished.

Everything but the cluster runs as in production, on loopback: NATS, PostgreSQL and
SeaweedFS (the local stack's servers), and the gateway, dispatcher and watcher as
`ckrv-cloud serve` processes with `CKRV_RUNNER_BACKEND=kubernetes`. The cluster is
kmock's Kubernetes emulator made cluster-like, with a Job controller and a simulated
kubelet (`tests.kubelet.SimulatedCluster`), in a process of its own. The kubelet runs
the container of every pod of the worker image as a `SimulatedWorker`: it reads the
job from the pod's Secret, prints the worker's first lines, stays running for the
spec's hold time, uploads a small diff, bundle and `result.json` through the job's
presigned URLs as the worker does, prints the worker's last line and exits with 0.

WARM_UP_JOBS jobs that hold for no time run first, one after the other. Then JOBS
jobs of USERS enterprise users (enough for all JOBS to run at once within the tier's
limit of running jobs, with the dispatcher's capacity set to JOBS) are offered at
OFFERED_RATE submissions/s, spread over one keep-alive connection per user: the load of
a busy service, which the two shared cores can carry, rather than a flood that measures
how long a backlog takes to drain (run with OFFERED_RATE = None for that: each
connection then sends its next `POST /v1/jobs` as soon as the last one was answered;
dispatch p99 is then 9 to 13 s here, bounded by the CPU the dispatch of each job takes).
Each job holds its pod running for HOLD_SECONDS, longer than the submissions take, so
all of them are in flight at once by the end; the last LATE_SHARE of the jobs were
submitted with nearly JOBS in flight, and their dispatch is reported apart.
From the moment a job's POST was due (went out, unpaced), the arrival of its
- `job.queued` (the dispatcher took the submission up: the first part of the dispatch),
- `job.dispatched` (the dispatcher admitted it and claimed the attempt),
- `job.started` (the watcher saw its pod running), and
- `job.succeeded`, the terminal event measured: the watcher appends it once the pod
  succeeded and the uploads were verified in S3 (after the `job.artifact-stored`s),
on a NATS subscription to `jobs.>` made before anything is submitted. A job is lost
when it has no terminal event within END_SECONDS of the last submission, or when a
`job.lost` was appended for it.

The projector (the gateway's read model): the events the burst appended (by JOBS
sequence; the parameters count the burst's jobs' events by kind), over the time from the
first submission until the projector's durable consumer had acknowledged the last of them
(its rate, so, under this load rather than its ceiling); its largest backlog (events
appended but not yet acknowledged), sampled every PROJECTOR_POLL_SECONDS; and how long
after the last terminal event arrived the `jobs` table showed every job of the burst ended.

Where the time goes: the CPU time each process (with everything below it, PostgreSQL's
backends for one) spent from the first submission until the read model was done, per job.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import multiprocessing
import os
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Collection, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp
import asyncpg
import httpx
import nats
import yarl
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from ckrv.events.subjects import JOBS_STREAM
from ckrv.schemas.api import SubscriptionTier
from ckrv.services.common.tiers import TIERS
from ckrv.services.gateway.projection import PROJECTOR_CONSUMER
from ckrv.services.runners.base import INPUT_DIR_ENV
from ckrv.services.stack.nats_server import NatsServer
from ckrv.services.stack.ports import free_ports
from ckrv.services.stack.postgres_server import PostgresServer
from ckrv.services.stack.process import Supervised
from ckrv.services.stack.provision import provision
from ckrv.services.stack.seaweed_server import SeaweedPorts, SeaweedServer
from ckrv.services.stack.service_process import ServiceProcess, connection_environment
from ckrv.services.stack.state import development_credential_keys
from ckrv.services.worker.job_input import ArtifactName, WorkerInput, read_worker_input
from ckrv.services.worker.job_spec import read_job_spec
from ckrv.services.worker.joblog import JobLog
from ckrv.services.worker.result import AgentRun, ArtifactDigest, JobResult
from tests.kubelet import PodLog, SimulatedCluster
from tests.perf.bench_execution import ENDS, enterprise_tokens
from tests.perf.http_load import KeepAliveClient
from tests.perf.report import BenchmarkResult, Figure, percentile
from tests.processes import PROC, process_tree

JOBS = 1_000
TIER = SubscriptionTier.ENTERPRISE
USERS = -(-JOBS // TIERS[TIER].concurrent_jobs)
WARM_UP_JOBS = 10
HOLD_SECONDS = 75.0
OFFERED_RATE: float | None = 20.0
LATE_SHARE = 0.1
END_SECONDS = 600.0
WARM_UP_END_SECONDS = 60.0
DISPATCH_P99_TARGET_MS = 1000.0
PROJECTOR_POLL_SECONDS = 0.1
READ_MODEL_POLL_SECONDS = 0.05
SERVICES = ("gateway", "dispatcher", "watcher")
SERVICE_START_SECONDS = 60.0
SERVICE_STOP_SECONDS = 10.0
CLUSTER_START_SECONDS = 60.0
WORKER_IMAGE = "ckrv-worker:simulated"
REPOSITORY = "https://git.example.com/acme/orders-service.git"
MEASURED_SPEC_ID = "bench-control-plane"
WARM_UP_SPEC_ID = "bench-control-plane-warm-up"
# How long the simulated worker keeps each job's pod running, by the job's spec id.
HOLD_BY_SPEC = {MEASURED_SPEC_ID: HOLD_SECONDS, WARM_UP_SPEC_ID: 0.0}
# The stages measured from each job's submission, by the event that ends them.
STAGES = ("queued", "dispatched", "started", "succeeded")
DIFF = (
    b"diff --git a/DONE.md b/DONE.md\n"
    b"new file mode 100644\n"
    b"--- /dev/null\n"
    b"+++ b/DONE.md\n"
    b"@@ -0,0 +1 @@\n"
    b"+done\n"
)
# Not a real bundle: storage checks a bundle's size and digest, not its content.
BUNDLE = b"# v2 git bundle\n" + bytes(range(256)) * 16


def request_body(spec_id: str) -> dict[str, str]:
    spec = f"id: {spec_id}\noverview: Write DONE.md to show the job ran.\n"
    return {"spec_content": spec, "git_repo_url": REPOSITORY, "git_base_branch": "main"}


# --- the simulated cluster, in a process of its own --------------------------------------------


def _digest(content: bytes) -> ArtifactDigest:
    return ArtifactDigest(size_bytes=len(content), sha256=hashlib.sha256(content).hexdigest())


def job_artifacts(job: WorkerInput, spec_id: str, seconds: float) -> dict[ArtifactName, bytes]:
    """What the worker uploads for a job that wrote DONE.md: diff, bundle, then `result.json`."""
    result = JobResult(
        job_id=job.job_id,
        attempt=job.attempt,
        spec_id=spec_id,
        summary="Wrote DONE.md.",
        base_branch=job.git_base_branch,
        base_commit="1" * 40,
        feature_branch=job.feature_branch,
        head_commit="2" * 40,
        files_changed=("DONE.md",),
        insertions=1,
        deletions=0,
        agents=(AgentRun(name="script", duration_seconds=seconds),),
        metrics={"duration_seconds": seconds},
        artifacts={"diff.patch": _digest(DIFF), "repo.bundle": _digest(BUNDLE)},
    )
    return {
        "diff.patch": DIFF,
        "repo.bundle": BUNDLE,
        "result.json": result.model_dump_json().encode(),
    }


class _WorkerOutput:
    """The worker's own log lines (`JobLog`), passed on to a pod's log."""

    def __init__(self, log: PodLog) -> None:
        self._buffer = io.StringIO()
        self._log = log
        self.lines = JobLog(self._buffer)

    async def flush(self) -> None:
        text = self._buffer.getvalue()
        self._buffer.seek(0)
        self._buffer.truncate()
        for line in text.splitlines(keepends=True):
            await self._log.add(line.encode())


class SimulatedWorker:
    """`ckrv-worker run` as the simulated kubelet's `Program`: a job's run without the clone
    or the agents, holding its pod running for `hold_by_spec[spec id]` seconds."""

    def __init__(self, hold_by_spec: Mapping[str, float]) -> None:
        self.hold_by_spec = dict(hold_by_spec)
        self.runs = 0
        self.failures: list[str] = []
        # aiohttp, as kmock's server: it costs the cluster's process less CPU than httpx.
        self._client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))

    async def close(self) -> None:
        await self._client.close()

    async def run(self, env: Mapping[str, str], log: PodLog) -> int:
        output = _WorkerOutput(log)
        output.lines.started("ckrv-worker started")
        await output.flush()
        job, _ = read_worker_input(Path(env[INPUT_DIR_ENV]))
        spec_id = read_job_spec(job.spec_content).spec_id
        output.lines.enter_phase("executing", "running the agents")
        await output.flush()
        hold = self.hold_by_spec[spec_id]
        await asyncio.sleep(hold)
        output.lines.enter_phase("uploading", "uploading the results")
        for name, content in job_artifacts(job, spec_id, hold).items():
            # As signed: yarl would otherwise normalise the query's escapes.
            url = yarl.URL(job.upload_urls[name], encoded=True)
            async with self._client.put(url, data=content) as response:
                if not response.ok:
                    self.failures.append(f"{job.job_id} {name}: {response.status}")
                    output.lines.finished(2, "upload_failed", f"{name}: {response.status}")
                    await output.flush()
                    return 2
            output.lines.info(f"uploaded {name} ({len(content)} bytes)")
        output.lines.finished(0, None, "the job succeeded", summary="Wrote DONE.md.")
        await output.flush()
        self.runs += 1
        return 0


def serve_cluster(folder: Path, connection: Connection) -> None:
    """The cluster process: sends the kubeconfig's path once the cluster is up, serves until
    anything arrives on `connection`, then sends what the simulated worker did."""
    asyncio.run(_serve_cluster(folder, connection))


async def _serve_cluster(folder: Path, connection: Connection) -> None:
    folder.mkdir()
    worker = SimulatedWorker(HOLD_BY_SPEC)
    try:
        async with SimulatedCluster(folder) as cluster:
            cluster.kubelet.programs[WORKER_IMAGE] = worker.run
            connection.send(str(cluster.kubeconfig))
            await asyncio.to_thread(connection.recv)
            connection.send(
                {
                    "runs": worker.runs,
                    "failures": worker.failures,
                    "requests_served": sum(1 for _ in cluster.emulator),
                }
            )
    finally:
        await worker.close()


@dataclass
class ClusterProcess:
    kubeconfig: Path
    pid: int
    report: dict[str, Any] = field(default_factory=dict)
    """What its simulated worker did, filled in once the cluster stopped."""


@contextlib.asynccontextmanager
async def cluster_process(folder: Path) -> AsyncIterator[ClusterProcess]:
    """The simulated cluster in a child process."""
    ours, theirs = multiprocessing.Pipe()
    process = multiprocessing.get_context("spawn").Process(
        target=serve_cluster, args=(folder, theirs), name="simulated-cluster"
    )
    process.start()
    try:
        ready = await asyncio.to_thread(
            lambda: wait([ours, process.sentinel], CLUSTER_START_SECONDS)
        )
        if ours not in ready:
            raise RuntimeError(
                f"the simulated cluster was not up in {CLUSTER_START_SECONDS:g} s"
                if not ready
                else f"the simulated cluster's process exited with {process.exitcode}"
            )
        assert process.pid is not None
        cluster = ClusterProcess(Path(ours.recv()), process.pid)
        yield cluster
        ours.send("stop")
        cluster.report.update(await asyncio.to_thread(ours.recv))
    finally:
        await asyncio.to_thread(process.join, SERVICE_STOP_SECONDS)
        if process.is_alive():
            process.kill()
            await asyncio.to_thread(process.join)


# --- the control plane -------------------------------------------------------------------------


@dataclass(frozen=True)
class ControlPlane:
    gateway_api_url: str
    nats_url: str
    database_url: str
    cluster: ClusterProcess
    pids: dict[str, int]
    """Each part's process, by name."""

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time so far of each part, with everything below its process, and of this one."""
        return {name: tree_cpu_seconds(pid) for name, pid in self.pids.items()} | {
            "benchmark": time.process_time()
        }


def tree_cpu_seconds(root: int) -> float:
    """CPU time of a process and of everything below it, with the children they reaped."""
    ticks = 0
    for entry in process_tree(root):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            stat = (PROC / str(entry.pid) / "stat").read_text()
            # After the command name: utime, stime, cutime and cstime are the 12th to 15th.
            ticks += sum(int(field) for field in stat[stat.rindex(")") + 2 :].split()[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def service_settings(kubeconfig: Path) -> dict[str, str]:
    """The Kubernetes runner on the simulated cluster, and room for every job at once."""
    return {
        "CKRV_RUNNER_BACKEND": "kubernetes",
        "CKRV_RUNNER_KUBERNETES_KUBECONFIG": str(kubeconfig),
        "CKRV_RUNNER_KUBERNETES_IMAGE": WORKER_IMAGE,
        "CKRV_DISPATCHER_CAPACITY": str(JOBS),
    }


@contextlib.asynccontextmanager
async def control_plane() -> AsyncIterator[ControlPlane]:
    """Servers, the simulated cluster and the services, in a throw-away folder."""
    state = Path(tempfile.mkdtemp(prefix="ckrv-bench-control-plane-"))
    # PostgreSQL runs as `nobody` when the benchmark runs as root: it must pass through.
    state.chmod(0o711)
    nats_port, monitor_port, postgres_port, *service_ports = free_ports(3 + len(SERVICES))
    nats_server = NatsServer(state / "nats", port=nats_port, monitor_port=monitor_port)
    postgres = PostgresServer(state / "postgres", port=postgres_port)
    s3 = SeaweedServer(state / "seaweed", ports=SeaweedPorts.allocate())
    servers = (nats_server, postgres, s3)
    services: list[ServiceProcess] = []
    try:
        await asyncio.gather(*(server.start() for server in servers))
        await provision(nats_server.url, postgres.dsn, s3.client(), s3.bucket)
        async with cluster_process(state / "cluster") as cluster:
            connections = {
                **connection_environment(
                    nats_server,
                    postgres,
                    s3,
                    credential_keys=development_credential_keys(state),
                ),
                **service_settings(cluster.kubeconfig),
            }
            services = [
                ServiceProcess(
                    name,
                    port=port,
                    log_dir=state / "services",
                    connections=connections,
                    shutdown_timeout_seconds=SERVICE_STOP_SECONDS / 2,
                )
                for name, port in zip(SERVICES, service_ports, strict=True)
            ]
            try:
                await asyncio.gather(
                    *(service.start(SERVICE_START_SECONDS) for service in services)
                )
                yield ControlPlane(
                    gateway_api_url=f"{services[0].url}/v1",
                    nats_url=nats_server.url,
                    database_url=postgres.dsn,
                    cluster=cluster,
                    pids={
                        **{part.name: _pid(part) for part in (*services, *servers)},
                        "simulated cluster": cluster.pid,
                    },
                )
            finally:
                await asyncio.gather(*(service.stop(SERVICE_STOP_SECONDS) for service in services))
    finally:
        await asyncio.gather(*(server.stop() for server in reversed(servers)))
        shutil.rmtree(state, ignore_errors=True)


def _pid(part: Supervised) -> int:
    assert part.process is not None
    assert part.process.pid is not None
    return part.process.pid


# --- measuring ---------------------------------------------------------------------------------


class JobEvents:
    """When each job's events arrived (the first of each kind) and how many of each kind, from
    a NATS subscription to `jobs.>`; and a wait for a set of jobs to end."""

    def __init__(self) -> None:
        self.arrived: dict[UUID, dict[str, float]] = defaultdict(dict)
        self.counts: dict[UUID, Counter[str]] = defaultdict(Counter)
        self.ends: dict[UUID, str] = {}
        self._waiting: set[UUID] = set()
        self._all_ended = asyncio.Event()

    async def note(self, message: Msg) -> None:
        _, job_id_text, token = message.subject.split(".")
        job_id = UUID(job_id_text)
        self.counts[job_id][token] += 1
        self.arrived[job_id].setdefault(token, time.perf_counter())
        if token in ENDS and job_id not in self.ends:
            self.ends[job_id] = token
            self._waiting.discard(job_id)
            if not self._waiting:
                self._all_ended.set()

    async def wait_for_ends(self, jobs: Collection[UUID], within: float) -> None:
        """Return once every job of `jobs` has ended, or after `within` seconds."""
        self._waiting = set(jobs) - self.ends.keys()
        self._all_ended.clear()
        if self._waiting:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_ended.wait(), within)

    def since(self, job_id: UUID, token: str, submitted: float) -> float | None:
        arrived = self.arrived[job_id].get(token)
        return None if arrived is None else arrived - submitted


class ProjectorSamples:
    """The projector consumer's acknowledged stream sequence and backlog, over time."""

    def __init__(self) -> None:
        self.moments: list[tuple[float, int, int]] = []
        """(when, ack floor's stream sequence, events delivered or pending but not acknowledged)"""
        self._added = asyncio.Condition()

    async def add(self, floor: int, backlog: int) -> None:
        self.moments.append((time.perf_counter(), floor, backlog))
        async with self._added:
            self._added.notify_all()

    async def wait_acknowledged(self, sequence: int) -> None:
        async with self._added:
            await self._added.wait_for(lambda: self.acknowledged_by(sequence) is not None)

    def acknowledged_by(self, sequence: int) -> float | None:
        """When the projector had first acknowledged every event up to `sequence`."""
        return next((when for when, floor, _ in self.moments if floor >= sequence), None)

    def largest_backlog(self) -> int:
        return max((backlog for _, _, backlog in self.moments), default=0)


async def sample_projector(js: JetStreamContext, samples: ProjectorSamples) -> None:
    """Sample the projector's consumer until cancelled."""
    while True:
        info = await js.consumer_info(JOBS_STREAM, PROJECTOR_CONSUMER)
        floor = info.ack_floor.stream_seq if info.ack_floor else 0
        backlog = (info.num_pending or 0) + (info.num_ack_pending or 0)
        await samples.add(floor or 0, backlog)
        await asyncio.sleep(PROJECTOR_POLL_SECONDS)


async def last_sequence(js: JetStreamContext) -> int:
    info = await js.stream_info(JOBS_STREAM)
    return info.state.last_seq


async def read_model_all_ended(database_url: str, jobs: Collection[UUID]) -> float:
    """When the gateway's `jobs` table first showed every one of `jobs` in a final status."""
    connection = await asyncpg.connect(database_url)
    try:
        while True:
            ended = await connection.fetchval(
                "SELECT count(*) FROM jobs WHERE id = ANY($1::uuid[]) AND status = ANY($2)",
                list(jobs),
                ["succeeded", "failed", "timeout", "cancelled"],
            )
            if ended == len(jobs):
                return time.perf_counter()
            await asyncio.sleep(READ_MODEL_POLL_SECONDS)
    finally:
        await connection.close()


async def submit_all(
    clients: list[KeepAliveClient], spec_id: str, count: int, rate: float | None = None
) -> dict[UUID, float]:
    """`count` jobs, spread over the clients: offered at `rate` per second, or each client
    sending its next as soon as its last was answered; each job's id and the moment its
    POST was due (paced) or went out."""
    submitted: dict[UUID, float] = {}
    started = time.perf_counter()

    async def submit_share(index: int, client: KeepAliveClient, share: int) -> None:
        request = client.prepare_post("/jobs", request_body(spec_id))
        for n in range(share):
            if rate is None:
                due = time.perf_counter()
            else:
                due = started + (n * len(clients) + index) / rate
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
            answer = await client.send(request)
            if answer.status != httpx.codes.CREATED:
                raise RuntimeError(f"submission refused: {answer.status} {answer.body!r}")
            submitted[UUID(answer.json()["id"])] = due

    shares = [count // len(clients) + (n < count % len(clients)) for n in range(len(clients))]
    await asyncio.gather(
        *(
            submit_share(index, client, share)
            for index, (client, share) in enumerate(zip(clients, shares, strict=True))
        )
    )
    return submitted


async def warm_up(client: KeepAliveClient, events: JobEvents) -> None:
    """Jobs one after the other, until each part of the way has run once or more."""
    for _ in range(WARM_UP_JOBS):
        job_id, *_ = await submit_all([client], WARM_UP_SPEC_ID, 1)
        await events.wait_for_ends([job_id], WARM_UP_END_SECONDS)
        end = events.ends.get(job_id)
        if end != "succeeded":
            raise RuntimeError(f"warm-up job {job_id} did not succeed: {end or 'no end'}")


@dataclass
class Burst:
    submitted: dict[UUID, float]
    submitting_seconds: float
    first_sequence: int
    """The first JOBS sequence the burst could have appended."""
    last_sequence: int
    read_model_ended_at: float | None
    projector: ProjectorSamples
    cpu_seconds: dict[str, float]
    """CPU time each part spent from the first submission until the read model was done."""


async def measure(plane: ControlPlane) -> tuple[Burst, JobEvents]:
    tokens = await enterprise_tokens(plane.database_url, USERS)
    clients = [
        KeepAliveClient(plane.gateway_api_url, {"Authorization": f"Bearer {token}"})
        for token in tokens
    ]
    events = JobEvents()
    connection = await nats.connect(plane.nats_url)
    js = connection.jetstream()
    samples = ProjectorSamples()
    sampler: asyncio.Task[None] | None = None
    try:
        await connection.subscribe("jobs.>", cb=events.note)
        # Round trip: the server has the subscription before the first submission.
        await connection.flush()
        await warm_up(clients[0], events)
        first_sequence = await last_sequence(js) + 1
        sampler = asyncio.create_task(sample_projector(js, samples))
        cpu_before = plane.cpu_seconds()
        began = time.perf_counter()
        submitted = await submit_all(clients, MEASURED_SPEC_ID, JOBS, OFFERED_RATE)
        submitting_seconds = time.perf_counter() - began
        await events.wait_for_ends(submitted, END_SECONDS)
        ended_at = None
        final_sequence = await last_sequence(js)
        # Bounded: a projector or read model that never catches up leaves its figures out.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(END_SECONDS):
                if submitted.keys() <= events.ends.keys():
                    ended_at = await read_model_all_ended(plane.database_url, submitted)
                await samples.wait_acknowledged(final_sequence)
        cpu_after = plane.cpu_seconds()
    finally:
        if sampler is not None:
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
        await connection.close()
        for client in clients:
            await client.close()
    burst = Burst(
        submitted=submitted,
        submitting_seconds=submitting_seconds,
        first_sequence=first_sequence,
        last_sequence=final_sequence,
        read_model_ended_at=ended_at,
        projector=samples,
        cpu_seconds={name: cpu_after[name] - cpu_before[name] for name in cpu_after},
    )
    return burst, events


# --- figures -----------------------------------------------------------------------------------


def stage_figures(stage: str, seconds: list[float], p99_target_ms: float | None) -> list[Figure]:
    milliseconds = [sample * 1000 for sample in seconds]
    name = f"submit to job.{stage}"
    return [
        Figure(f"{name} p50", percentile(milliseconds, 0.50), "ms", higher_is_better=False),
        Figure(f"{name} p90", percentile(milliseconds, 0.90), "ms", higher_is_better=False),
        Figure(
            f"{name} p99",
            percentile(milliseconds, 0.99),
            "ms",
            target=p99_target_ms,
            higher_is_better=False,
        ),
        Figure(f"{name} max", max(milliseconds), "ms", higher_is_better=False),
    ]


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The most intervals (start, end) that overlap at one moment."""
    changes = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = current = 0
    for _, change in changes:
        current += change
        most = max(most, current)
    return most


def figures(burst: Burst, events: JobEvents) -> list[Figure]:
    jobs = burst.submitted
    arrived = events.arrived
    ended = {
        job_id: arrived[job_id][events.ends[job_id]] for job_id in jobs if job_id in events.ends
    }
    succeeded = sum(events.ends.get(job_id) == "succeeded" for job_id in jobs)
    lost = sum(job_id not in ended or "lost" in arrived[job_id] for job_id in jobs)
    in_flight = most_at_once([(jobs[job_id], end) for job_id, end in ended.items()])
    running = most_at_once(
        [
            (arrived[job_id]["started"], end)
            for job_id, end in ended.items()
            if "started" in arrived[job_id]
        ]
    )
    first_submission = min(jobs.values())
    result = [
        Figure("jobs succeeded", succeeded, "jobs", target=JOBS),
        Figure("jobs lost", lost, "jobs", target=0, higher_is_better=False),
        Figure("submissions/s", JOBS / burst.submitting_seconds, "jobs/s"),
        Figure("most jobs in flight at once", in_flight, "jobs"),
        Figure("most pods running at once", running, "jobs"),
    ]
    for stage in STAGES:
        samples = [
            since
            for job_id, submitted in jobs.items()
            if (since := events.since(job_id, stage, submitted)) is not None
        ]
        target = DISPATCH_P99_TARGET_MS if stage == "dispatched" else None
        if samples:
            result += stage_figures(stage, samples, target)
    late = sorted(jobs, key=jobs.__getitem__)[-int(len(jobs) * LATE_SHARE) :]
    late_dispatches = [
        since * 1000
        for job_id in late
        if (since := events.since(job_id, "dispatched", jobs[job_id])) is not None
    ]
    if late_dispatches:
        result.append(
            Figure(
                f"last {len(late)} submitted: submit to job.dispatched p99",
                percentile(late_dispatches, 0.99),
                "ms",
                target=DISPATCH_P99_TARGET_MS,
                higher_is_better=False,
            )
        )
    if ended:
        result.append(
            Figure(
                "first submission to last end",
                max(ended.values()) - first_submission,
                "s",
                higher_is_better=False,
            )
        )
    appended = burst.last_sequence - burst.first_sequence + 1
    projected_at = burst.projector.acknowledged_by(burst.last_sequence)
    result.append(Figure("events appended", appended, "events"))
    if projected_at is not None:
        result.append(
            Figure(
                "events/s through the projector",
                appended / (projected_at - first_submission),
                "events/s",
            )
        )
    result.append(
        Figure(
            "projector backlog max",
            burst.projector.largest_backlog(),
            "events",
            higher_is_better=False,
        )
    )
    if burst.read_model_ended_at is not None and ended:
        result.append(
            Figure(
                "last end to read model showing all ended",
                (burst.read_model_ended_at - max(ended.values())) * 1000,
                "ms",
                higher_is_better=False,
            )
        )
    result.append(
        Figure(
            "CPU per job, all processes",
            sum(burst.cpu_seconds.values()) / JOBS * 1000,
            "ms",
            higher_is_better=False,
        )
    )
    return result


async def run() -> BenchmarkResult:
    async with control_plane() as plane:
        burst, events = await measure(plane)
    return BenchmarkResult(
        name="control_plane",
        description=(
            f"{JOBS} jobs of {USERS} {TIER.value} users offered at "
            f"{OFFERED_RATE or 'as fast as one gateway takes them'} per second, dispatched by "
            "one dispatcher and watched by one watcher on the Kubernetes "
            "runner against kmock's emulator with a simulated kubelet; each job's pod runs "
            f"{HOLD_SECONDS:g} s and uploads a small result. Stages from each job's POST to the "
            "arrival of its job.queued, job.dispatched, job.started and job.succeeded (the "
            "terminal event, appended by the watcher after verifying the uploads) on NATS."
        ),
        figures=figures(burst, events),
        parameters={
            "jobs": JOBS,
            "users": USERS,
            "tier": TIER.value,
            "dispatcher_capacity": JOBS,
            "hold_seconds": HOLD_SECONDS,
            "offered_rate": OFFERED_RATE,
            "warm_up_jobs": WARM_UP_JOBS,
            "terminal_event": "job.succeeded",
            "end_timeout_seconds": END_SECONDS,
            "submission_connections": USERS,
            "simulated_worker_runs": plane.cluster.report.get("runs"),
            "simulated_worker_failures": plane.cluster.report.get("failures"),
            "kubernetes_requests_served": plane.cluster.report.get("requests_served"),
            "events_by_kind": dict(
                sum((events.counts[job_id] for job_id in burst.submitted), Counter()).most_common()
            ),
            "cpu_ms_per_job": {
                name: round(seconds / JOBS * 1000, 2)
                for name, seconds in sorted(burst.cpu_seconds.items(), key=lambda item: -item[1])
            },
        },
    )
