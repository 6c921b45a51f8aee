"""Webhooks: a job's end to its webhook received, and the deliveries one notifier sustains.

One gateway with its own nats-server and PostgreSQL (`local_gateway`) and one
notifier process (`ckrv-cloud serve notifier`, standard settings). One user has
ENDPOINTS webhooks, each on a receiver of its own in this process: a lean asyncio
HTTP server on a loopback port (`Receiver`) that answers each request as soon as
its body is in, keeping the connection open, and notes when it came. Jobs are
written to JOBS through the event store, as the dispatcher and watcher write them,
and brought up to `job.started` before a phase; each phase starts once the
notifier's consumer has caught up with them.

- Latency: LATENCY_JOBS jobs end one at a time (`job.succeeded`, after a few to warm
  up). A sample per job and endpoint, from just before the event's append to the
  moment that endpoint's receiver has read the delivery.
- Throughput: one endpoint answers 500 to everything; BURST_JOBS jobs end at once.
  Deliveries/s is the healthy endpoints' deliveries over the time from the first
  append to the last of them received. The failing endpoint stays enabled for the
  run (`CKRV_NOTIFIER_DISABLE_AFTER_FAILURES` raised), so its retries on the standard
  schedule compete with the healthy deliveries throughout; its attempts are counted.

Every delivery's signature is checked afterwards with the `standardwebhooks`
reference library.
"""

from __future__ import annotations

import asyncio
import functools
import re
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from uuid import UUID, uuid4

import httpx
from nats.aio.client import Client
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from ckrv.events.catalog import JobSubmittedData, JobSucceededData
from ckrv.events.envelope import new_event_id
from ckrv.events.state import SubmitJob, SucceedJob, decide
from ckrv.events.store import JobEventStore
from ckrv.events.subjects import JOBS_STREAM
from ckrv.services.common.connections import connect_nats
from ckrv.services.notifier.service import CONSUMER
from ckrv.services.stack.ports import free_ports
from ckrv.services.stack.service_process import ServiceProcess
from tests.integration.gateway.lifecycle import SERVICE, start
from tests.perf.bench_gateway_submit import process_cpu_seconds
from tests.perf.local_gateway import local_gateway
from tests.perf.report import BenchmarkResult, Figure, latency_figures

ENDPOINTS = 100
WARM_UP_JOBS = 3
LATENCY_JOBS = 50
BURST_JOBS = 300
# A delivery that has not come this long after its event is a failure of the run.
GIVE_UP_SECONDS = 120.0
RESPONSES = {
    200: b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    500: b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
}
_CONTENT_LENGTH = re.compile(rb"(?im)^content-length:\s*(\d+)\s*$")
_WEBHOOK_ID = re.compile(rb"(?im)^webhook-id:\s*(\S+)\s*$")
_HEADER = re.compile(rb"(?m)^([^:\r\n]+):\s*(.*?)\r?$")


@dataclass(frozen=True)
class Arrival:
    endpoint: int
    at: float
    head: bytes
    body: bytes


@dataclass
class Arrivals:
    """Every request the receivers read, by webhook-id; waiters woken as they come."""

    by_message: dict[str, list[Arrival]] = field(default_factory=lambda: defaultdict(list))
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, webhook_id: str, arrival: Arrival) -> None:
        self.by_message[webhook_id].append(arrival)
        self.changed.set()

    async def wait_until(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + GIVE_UP_SECONDS
        while not condition():
            self.changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{what}: not within {GIVE_UP_SECONDS:g} s")
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except TimeoutError:
                continue


class Receiver(asyncio.Protocol):
    """One endpoint: HTTP/1.1 requests with a Content-Length, answered with `status`."""

    def __init__(self, endpoint: int, arrivals: Arrivals, statuses: dict[int, int]) -> None:
        self._endpoint = endpoint
        self._arrivals = arrivals
        self._statuses = statuses
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while (head_end := self._buffer.find(b"\r\n\r\n")) >= 0:
            head = self._buffer[:head_end]
            length_match = _CONTENT_LENGTH.search(head)
            body_end = head_end + 4 + (int(length_match.group(1)) if length_match else 0)
            if len(self._buffer) < body_end:
                return
            body = self._buffer[head_end + 4 : body_end]
            self._buffer = self._buffer[body_end:]
            arrived = time.perf_counter()
            id_match = _WEBHOOK_ID.search(head)
            webhook_id = id_match.group(1).decode() if id_match else ""
            self._arrivals.add(webhook_id, Arrival(self._endpoint, arrived, head, body))
            assert self._transport is not None
            self._transport.write(RESPONSES[self._statuses.get(self._endpoint, 200)])


@dataclass
class Bench:
    nc: Client
    store: JobEventStore
    user_id: UUID
    arrivals: Arrivals
    secrets: dict[int, str]
    statuses: dict[int, int]

    async def started_jobs(self, count: int) -> list[UUID]:
        """`count` new jobs of the user, submitted, queued, dispatched and started."""
        jobs = [uuid4() for _ in range(count)]
        await asyncio.gather(*(self._start(job_id) for job_id in jobs))
        await self.caught_up()
        return jobs

    async def _start(self, job_id: UUID) -> None:
        submission = JobSubmittedData(
            user_id=str(self.user_id),
            tier="enterprise",
            spec_id="bench-webhooks",
            spec_content="id: bench-webhooks\n",
            git_repo_url="https://github.com/acme/app.git",
            git_base_branch="main",
            git_credential_name=None,
            time_limit_seconds=3600,
            max_attempts=1,
        )
        command = SubmitJob(actor=f"user:{self.user_id}", submission=submission)
        await self.store.execute(job_id, functools.partial(decide, command=command))
        await start(self.store, job_id)

    async def succeed(self, job_id: UUID) -> tuple[str, float]:
        """Append the job's end; its event id, and the time just before the append."""
        event_id = new_event_id()
        command = SucceedJob(
            actor=SERVICE,
            event_id=event_id,
            result=JobSucceededData(attempt=1, summary="Benchmarked."),
        )
        appending = time.perf_counter()
        await self.store.execute(job_id, functools.partial(decide, command=command))
        return str(event_id), appending

    async def caught_up(self) -> None:
        """Wait until the notifier's consumer has handled every event on JOBS."""
        js = self.nc.jetstream()
        deadline = time.monotonic() + GIVE_UP_SECONDS
        while True:
            info = await js.consumer_info(JOBS_STREAM, CONSUMER)
            if info.num_pending == 0 and info.num_ack_pending == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the notifier's consumer did not catch up")
            await asyncio.sleep(0.05)

    def received(self, webhook_id: str, endpoints: set[int]) -> list[Arrival]:
        return [a for a in self.arrivals.by_message[webhook_id] if a.endpoint in endpoints]

    def delivered_to_all(self, webhook_id: str, endpoints: set[int]) -> bool:
        return len(self.received(webhook_id, endpoints)) == len(endpoints)

    def verified(self) -> tuple[int, int]:
        """How many requests the reference library accepted, of how many."""
        accepted = total = 0
        for arrivals in self.arrivals.by_message.values():
            for arrival in arrivals:
                total += 1
                headers = {
                    name.decode().lower(): value.decode()
                    for name, value in _HEADER.findall(arrival.head.split(b"\r\n", 1)[1])
                }
                try:
                    Webhook(self.secrets[arrival.endpoint]).verify(arrival.body, headers)
                except WebhookVerificationError:
                    continue
                accepted += 1
        return accepted, total


async def latency(bench: Bench) -> list[float]:
    everyone = set(range(ENDPOINTS))
    samples: list[float] = []
    jobs = await bench.started_jobs(WARM_UP_JOBS + LATENCY_JOBS)
    for index, job_id in enumerate(jobs):
        webhook_id, appending = await bench.succeed(job_id)
        await bench.arrivals.wait_until(
            functools.partial(bench.delivered_to_all, webhook_id, everyone),
            f"job {job_id} delivered to every endpoint",
        )
        if index >= WARM_UP_JOBS:
            samples.extend(a.at - appending for a in bench.received(webhook_id, everyone))
    return samples


@dataclass(frozen=True)
class Burst:
    healthy_deliveries: int
    seconds: float
    failing_attempts: int
    notifier_cpu_seconds: float


async def burst(bench: Bench, notifier_pid: int) -> Burst:
    failing = 0
    healthy = set(range(ENDPOINTS)) - {failing}
    bench.statuses[failing] = 500
    jobs = await bench.started_jobs(BURST_JOBS)
    cpu_before = process_cpu_seconds(notifier_pid)
    ended = await asyncio.gather(*(bench.succeed(job_id) for job_id in jobs))
    first_append = min(appending for _, appending in ended)
    ids = [webhook_id for webhook_id, _ in ended]
    await bench.arrivals.wait_until(
        lambda: all(bench.delivered_to_all(webhook_id, healthy) for webhook_id in ids),
        "every healthy delivery of the burst",
    )
    last = max(a.at for webhook_id in ids for a in bench.received(webhook_id, healthy))
    cpu = process_cpu_seconds(notifier_pid) - cpu_before
    failing_attempts = sum(
        1
        for webhook_id in ids
        for a in bench.arrivals.by_message[webhook_id]
        if a.endpoint == failing and a.at <= last
    )
    return Burst(len(healthy) * len(ids), last - first_append, failing_attempts, cpu)


@asynccontextmanager
async def receivers(arrivals: Arrivals, statuses: dict[int, int]) -> AsyncIterator[list[int]]:
    """A receiver per endpoint, each on a loopback port of its own; their ports."""
    loop = asyncio.get_running_loop()
    servers = [
        await loop.create_server(
            functools.partial(Receiver, endpoint, arrivals, statuses), "127.0.0.1", 0
        )
        for endpoint in range(ENDPOINTS)
    ]
    try:
        yield [server.sockets[0].getsockname()[1] for server in servers]
    finally:
        for server in servers:
            server.close()


async def add_webhooks(api: httpx.AsyncClient, ports: list[int]) -> dict[int, str]:
    """A webhook per receiver; their secrets by endpoint."""
    secrets = {}
    for endpoint, port in enumerate(ports):
        made = await api.post("/webhooks", json={"url": f"http://127.0.0.1:{port}/hook"})
        made.raise_for_status()
        secrets[endpoint] = made.json()["secret"]
    return secrets


async def run() -> BenchmarkResult:
    arrivals = Arrivals()
    statuses: dict[int, int] = {}
    log_dir = Path(tempfile.mkdtemp(prefix="ckrv-bench-webhooks-"))
    try:
        async with local_gateway() as local, receivers(arrivals, statuses) as ports:
            token = local.gateway.token(f"bench-webhooks-{uuid4().hex[:8]}@example.com")
            async with httpx.AsyncClient(
                base_url=local.gateway.api_url,
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            ) as api:
                user_id = UUID((await api.get("/users/me")).json()["id"])
                secrets = await add_webhooks(api, ports)
            (port,) = free_ports(1)
            notifier = ServiceProcess(
                "notifier",
                port=port,
                log_dir=log_dir,
                connections={
                    "CKRV_ENV": "dev",
                    "CKRV_NATS_URL": local.nats_url,
                    "CKRV_DATABASE_URL": local.database_url,
                    "CKRV_NOTIFIER_DISABLE_AFTER_FAILURES": "1000000",
                },
                shutdown_timeout_seconds=5,
            )
            nc = await connect_nats(local.nats_url, name="bench-webhooks")
            try:
                await notifier.start()
                assert notifier.process is not None
                assert notifier.process.pid is not None
                bench = Bench(nc, JobEventStore(nc), user_id, arrivals, secrets, statuses)
                latencies = await latency(bench)
                result = await burst(bench, notifier.process.pid)
                accepted, total = bench.verified()
            finally:
                await notifier.stop()
                await nc.close()
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)

    return BenchmarkResult(
        name="webhooks",
        description=(
            f"A job's end (job.succeeded appended) to its webhook received by each of "
            f"{ENDPOINTS} endpoints, one job at a time; then deliveries/s sustained by one "
            f"notifier for {BURST_JOBS} jobs ending at once with one of the endpoints "
            "answering 500 to everything."
        ),
        figures=[
            *latency_figures(
                f"job end to webhook received ({ENDPOINTS} endpoints)", latencies, None
            ),
            Figure(
                "deliveries/s, one endpoint answering 500",
                result.healthy_deliveries / result.seconds,
                "/s",
            ),
            Figure(
                "attempts to the failing endpoint meanwhile",
                result.failing_attempts,
                "",
                higher_is_better=False,
            ),
            Figure(
                "notifier CPU per 1,000 deliveries",
                result.notifier_cpu_seconds * 1000 / result.healthy_deliveries,
                "s",
                higher_is_better=False,
            ),
            Figure("signatures the reference library accepted", 100 * accepted / total, "%"),
        ],
        parameters={
            "endpoints": ENDPOINTS,
            "latency_jobs": LATENCY_JOBS,
            "burst_jobs": BURST_JOBS,
            "latency_samples": len(latencies),
            "burst_healthy_deliveries": result.healthy_deliveries,
            "burst_seconds": round(result.seconds, 3),
            "requests_verified": total,
        },
    )
