"""Log lines from LOGS to following clients: latency, lines lost, and the gateway's memory.

One gateway process (`ckrv-cloud serve gateway`) on its own nats-server and
PostgreSQL. Lines are published on `logs.<job_id>` with JetStream acks, as the
log-relay publishes them; clients follow `GET /v1/jobs/{id}/logs?follow=true`
with a lean event-stream reader (`StreamReader` below): on the two cores the
gateway shares with them, a general HTTP client would take CPU from it and add
its own delays to what is measured. A line's latency runs from just before its
publish to the moment a follower has parsed its event.

- One follower: one job, one stream, SINGLE_LINES lines at SINGLE_RATE/s.
- Load: FOLLOWERS streams spread evenly over JOBS jobs, all connected first; then
  each job gets LINES_PER_SECOND lines/s for LOAD_SECONDS. Every follower must
  receive every line of its job once: lines lost counts those that never came.
- Gateway memory: resident set size idle (before any stream) and at the end of
  the load, with FOLLOWERS streams open.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit
from uuid import UUID

import httpx
import nats
from nats.aio.client import Client

from ckrv.events.subjects import LOGS_STREAM, job_log_subject
from ckrv.schemas.logs import LogEntry, LogLevel
from ckrv.services.gateway.identity.keys import SigningKeys
from tests.perf.bench_gateway_submit import process_cpu_seconds
from tests.perf.local_gateway import local_gateway
from tests.perf.report import BenchmarkResult, Figure, latency_figures
from tests.running_gateway import RunningGateway

SINGLE_LINES = 500
SINGLE_RATE = 50
FOLLOWERS = 1_000
JOBS = 100
LINES_PER_SECOND = 10
LOAD_SECONDS = 20
CONNECT_BATCH = 50
# After the last line, how long stragglers may take before they count as lost.
DRAIN_SECONDS = 10.0

SINGLE_P50_TARGET_MS = 20.0
SINGLE_P99_TARGET_MS = 50.0
LOAD_P99_TARGET_MS = 500.0
# A line as long as an agent's typical output line.
MESSAGE = "Running tests: tests/test_orders.py::test_rate_limit_per_customer PASSED"


class StreamReader:
    """One follower: a GET on its own connection, its chunked event stream parsed by hand.

    It takes from each event only the line's `seq` (the last field of the gateway's JSON)
    and hands it to `on_line` with the time it was read.
    """

    def __init__(self, url: str, token: str, on_line: Callable[[int, float], None]) -> None:
        parts = urlsplit(url)
        assert parts.hostname is not None
        assert parts.port is not None
        self._host, self._port = parts.hostname, parts.port
        self._request = (
            f"GET {parts.path}?follow=true HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
        ).encode()
        self._on_line = on_line
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> asyncio.StreamReader:
        reader, self._writer = await asyncio.open_connection(self._host, self._port)
        self._writer.write(self._request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = head.split(b" ", 2)[1]
        if status != b"200" or b"chunked" not in head.lower():
            raise RuntimeError(f"no event stream: {head.decode(errors='replace')}")
        return reader

    async def read(self, reader: asyncio.StreamReader) -> None:
        """Until the stream or the connection ends."""
        pending = b""
        while True:
            size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                return
            now = time.perf_counter()
            *events, pending = (pending + chunk[:-2]).split(b"\n\n")
            for event in events:
                found = event.rfind(b'"seq":')
                if found >= 0:
                    self._on_line(int(event[found + 6 : event.index(b"}", found)]), now)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class Publisher:
    """Publishes numbered lines of jobs and remembers when each publish began."""

    def __init__(self, nc: Client) -> None:
        self._js = nc.jetstream()
        self.published_at: dict[tuple[UUID, int], float] = {}

    async def publish(self, job_id: UUID, seq: int) -> None:
        entry = LogEntry(
            timestamp=datetime.now(UTC),
            level=LogLevel.INFO,
            source="agent:bench",
            message=MESSAGE,
            phase="executing",
            attempt=1,
            seq=seq,
        )
        payload = entry.model_dump_json().encode()
        self.published_at[job_id, seq] = time.perf_counter()
        await self._js.publish(job_log_subject(job_id), payload, stream=LOGS_STREAM)


class Follower:
    """A stream of one job and what it received: latencies, and each `seq` seen."""

    def __init__(
        self, gateway: RunningGateway, token: str, job_id: UUID, publisher: Publisher, lines: int
    ) -> None:
        self.job_id = job_id
        self.seen: list[int] = []
        self.latencies: list[float] = []
        # Set once every line the job will get has come.
        self.complete = asyncio.Event()
        self._lines = lines
        self._publisher = publisher
        self.reader = StreamReader(f"{gateway.api_url}/jobs/{job_id}/logs", token, self._line)
        self.task: asyncio.Task[None] | None = None

    def _line(self, seq: int, at: float) -> None:
        self.seen.append(seq)
        self.latencies.append(at - self._publisher.published_at[self.job_id, seq])
        if len(self.seen) >= self._lines:
            self.complete.set()

    @property
    def lost(self) -> int:
        return len(set(range(1, self._lines + 1)) - set(self.seen))

    @property
    def repeated(self) -> int:
        return len(self.seen) - len(set(self.seen))

    async def start(self) -> None:
        stream = await self.reader.open()
        self.task = asyncio.create_task(self.reader.read(stream))

    async def stop(self) -> None:
        self.reader.close()
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


def resident_megabytes(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


async def access_token(gateway: RunningGateway) -> str:
    """An access token of an enterprise user, as the device flow issues them."""
    api_token = gateway.token("bench-logs@example.com", "enterprise")
    async with httpx.AsyncClient(base_url=gateway.api_url) as client:
        me = await client.get("/users/me", headers={"Authorization": f"Bearer {api_token}"})
        me.raise_for_status()
    keys = SigningKeys(gateway.signing_keys, issuer=gateway.url)
    return keys.issue(UUID(me.json()["id"]), lifetime_seconds=3600)[0]


async def create_jobs(gateway: RunningGateway, token: str, count: int) -> list[UUID]:
    body = {
        "spec_content": "id: bench-logs\ngoal: Print lines.\n",
        "git_repo_url": "https://github.com/acme/orders-service.git",
        "git_base_branch": "main",
    }
    async with httpx.AsyncClient(
        base_url=gateway.api_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as client:
        answers = [await client.post("/jobs", json=body) for _ in range(count)]
    for answer in answers:
        answer.raise_for_status()
    return [UUID(answer.json()["id"]) for answer in answers]


async def paced(
    count: int, rate: float, offset: float, send: Callable[[int], Awaitable[None]]
) -> None:
    """`send(1)` … `send(count)`, `rate` per second, the first `offset` seconds from now."""
    started = time.perf_counter() + offset
    for n in range(1, count + 1):
        await asyncio.sleep(max(0.0, started + (n - 1) / rate - time.perf_counter()))
        await send(n)


async def drained(followers: list[Follower]) -> None:
    """Until every follower has every line, or DRAIN_SECONDS passed (the rest are lost)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_SECONDS):
            await asyncio.gather(*(follower.complete.wait() for follower in followers))


async def start_all(followers: list[Follower]) -> None:
    for first in range(0, len(followers), CONNECT_BATCH):
        await asyncio.gather(*(f.start() for f in followers[first : first + CONNECT_BATCH]))


async def measure(gateway: RunningGateway, nats_url: str) -> list[Figure]:
    token = await access_token(gateway)
    single_job, *load_jobs = await create_jobs(gateway, token, 1 + JOBS)
    nc = await nats.connect(nats_url)
    publisher = Publisher(nc)
    idle_megabytes = resident_megabytes(gateway.pid)
    try:
        single = Follower(gateway, token, single_job, publisher, SINGLE_LINES)
        await single.start()
        await paced(SINGLE_LINES, SINGLE_RATE, 0.0, partial(publisher.publish, single_job))
        await drained([single])
        await single.stop()

        lines = LINES_PER_SECOND * LOAD_SECONDS
        followers = [
            Follower(gateway, token, load_jobs[n % JOBS], publisher, lines)
            for n in range(FOLLOWERS)
        ]
        await start_all(followers)
        cpu_before = process_cpu_seconds(gateway.pid)
        started = time.perf_counter()
        await asyncio.gather(
            *(
                # The jobs' lines staggered evenly over each tenth of a second.
                paced(lines, LINES_PER_SECOND, index / JOBS / LINES_PER_SECOND, send)
                for index, send in enumerate(partial(publisher.publish, j) for j in load_jobs)
            )
        )
        load_cpu = (process_cpu_seconds(gateway.pid) - cpu_before) / (time.perf_counter() - started)
        await drained(followers)
        loaded_megabytes = resident_megabytes(gateway.pid)
        for follower in followers:
            await follower.stop()
    finally:
        await nc.close()
    single_p50, *single_rest = latency_figures(
        "1 follower: latency", single.latencies, SINGLE_P99_TARGET_MS
    )
    load_latencies = [latency for follower in followers for latency in follower.latencies]
    return [
        dataclasses.replace(single_p50, target=SINGLE_P50_TARGET_MS),
        *single_rest,
        Figure("1 follower: lines lost", single.lost, "lines", target=0, higher_is_better=False),
        *latency_figures(f"{FOLLOWERS} followers: latency", load_latencies, LOAD_P99_TARGET_MS),
        Figure(
            f"{FOLLOWERS} followers: lines lost",
            sum(follower.lost for follower in followers),
            "lines",
            target=0,
            higher_is_better=False,
        ),
        Figure(
            f"{FOLLOWERS} followers: lines repeated",
            sum(follower.repeated for follower in followers),
            "lines",
            target=0,
            higher_is_better=False,
        ),
        Figure(
            f"{FOLLOWERS} followers: gateway CPU",
            load_cpu * 100,
            "% of a core",
            higher_is_better=False,
        ),
        Figure("gateway memory idle", idle_megabytes, "MiB", higher_is_better=False),
        Figure(
            f"gateway memory with {FOLLOWERS} followers",
            loaded_megabytes,
            "MiB",
            higher_is_better=False,
        ),
    ]


async def run() -> BenchmarkResult:
    async with local_gateway() as local:
        figures = await measure(local.gateway, local.nats_url)
    return BenchmarkResult(
        name="log_stream",
        description=(
            "Log lines published on LOGS to clients following them over Server-Sent Events "
            "from one gateway process: latency, lines lost, gateway CPU and memory."
        ),
        figures=figures,
        parameters={
            "single_lines": SINGLE_LINES,
            "single_rate_per_second": SINGLE_RATE,
            "followers": FOLLOWERS,
            "jobs": JOBS,
            "lines_per_second_per_job": LINES_PER_SECOND,
            "load_seconds": LOAD_SECONDS,
            "gateway_processes": 1,
        },
    )
