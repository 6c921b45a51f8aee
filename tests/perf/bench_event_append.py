"""Conditional appends through the publisher against a real nats-server: events/s and latency.

10,000 events: 1,000 jobs each going through a ten-event lifecycle (submitted,
queued, dispatched, started, five phase changes, succeeded), every append
conditional on the job's previous sequence. Measured twice: one writer at a
time (latency as a single caller sees it), and 32 jobs in flight at once
(throughput of one connection, as a busy service would drive it).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from uuid import UUID, uuid4

import nats
from nats.aio.client import Client

from ckrv.events.catalog import (
    JobDispatched,
    JobDispatchedData,
    JobPhaseChanged,
    JobPhaseChangedData,
    JobQueued,
    JobQueuedData,
    JobStarted,
    JobStartedData,
    JobSubmitted,
    JobSubmittedData,
    JobSucceeded,
    JobSucceededData,
    Phase,
    RunnerBackend,
    workload_name,
)
from ckrv.events.envelope import Event
from ckrv.events.publisher import EventPublisher
from ckrv.events.streams import provision_streams
from ckrv.services.stack.nats_server import NatsServer
from ckrv.services.stack.ports import free_ports
from tests.perf.report import BenchmarkResult, Figure, latency_figures

JOBS = 1_000
IN_FLIGHT = 32
THROUGHPUT_TARGET = 5_000
P99_TARGET_MS = 5.0
SERVICE = "service:dispatcher"
WORKLOAD_PHASES = (
    Phase.CLONING,
    Phase.PLANNING,
    Phase.EXECUTING,
    Phase.VERIFYING,
    Phase.UPLOADING,
)


def lifecycle(job_id: UUID) -> list[Event]:
    workload = workload_name(job_id, 1)
    return [
        JobSubmitted(
            job_id=job_id,
            actor="user:bench",
            data=JobSubmittedData(
                user_id="bench",
                tier="pro",
                spec_id="add-login",
                spec_content="id: add-login\ngoal: add a login page with tests\n" * 20,
                git_repo_url="https://example.com/acme/app.git",
                git_base_branch="main",
                time_limit_seconds=3600,
                max_attempts=3,
            ),
        ),
        JobQueued(job_id=job_id, actor=SERVICE, data=JobQueuedData(attempt=1)),
        JobDispatched(
            job_id=job_id,
            actor=SERVICE,
            data=JobDispatchedData(attempt=1, workload_name=workload, runner=RunnerBackend.LOCAL),
        ),
        JobStarted(
            job_id=job_id,
            actor="service:watcher",
            data=JobStartedData(attempt=1, workload_name=workload),
        ),
        *(
            JobPhaseChanged(
                job_id=job_id,
                actor="service:log-relay",
                data=JobPhaseChangedData(attempt=1, phase=phase),
            )
            for phase in WORKLOAD_PHASES
        ),
        JobSucceeded(
            job_id=job_id,
            actor="service:artifacts",
            data=JobSucceededData(
                attempt=1,
                summary="Added a login page and its tests.",
                files_changed=("app/login.py", "tests/test_login.py"),
                metrics={"duration_seconds": 312.5, "tokens": 48210},
            ),
        ),
    ]


async def append_lifecycle(
    publisher: EventPublisher, events: list[Event], latencies: list[float]
) -> None:
    expected = 0
    for event in events:
        started = time.perf_counter()
        result = await publisher.append(event, expected_sequence=expected)
        latencies.append(time.perf_counter() - started)
        expected = result.sequence


async def measure(nc: Client, in_flight: int) -> tuple[float, list[float], int]:
    publisher = EventPublisher(nc)
    jobs = [lifecycle(uuid4()) for _ in range(JOBS)]
    latencies: list[float] = []
    queue: asyncio.Queue[list[Event]] = asyncio.Queue()
    for events in jobs:
        queue.put_nowait(events)

    async def writer() -> None:
        while not queue.empty():
            await append_lifecycle(publisher, queue.get_nowait(), latencies)

    started = time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(in_flight)))
    elapsed = time.perf_counter() - started
    return elapsed, latencies, sum(len(events) for events in jobs)


async def run() -> BenchmarkResult:
    with tempfile.TemporaryDirectory(prefix="ckrv-bench-") as state:
        port, monitor_port = free_ports(2)
        server = NatsServer(Path(state), port=port, monitor_port=monitor_port)
        await server.start()
        try:
            nc = await nats.connect(server.url)
            await provision_streams(nc.jetstream())
            await measure(nc, IN_FLIGHT)  # warm-up: file store, connection, code paths
            figures: list[Figure] = []
            for label, in_flight in (("one writer", 1), (f"{IN_FLIGHT} in flight", IN_FLIGHT)):
                elapsed, latencies, count = await measure(nc, in_flight)
                # One writer waits for each ack, so its rate is only the inverse of its
                # latency; the throughput target is for a service with work in flight.
                rate_target = THROUGHPUT_TARGET if in_flight > 1 else None
                figures.append(Figure(f"{label}: appends/s", count / elapsed, "ev/s", rate_target))
                figures.extend(latency_figures(f"{label}: latency", latencies, P99_TARGET_MS))
            await nc.close()
        finally:
            await server.stop()
    return BenchmarkResult(
        name="event_append",
        description="Conditional job-event appends through EventPublisher, NATS on loopback.",
        figures=figures,
        parameters={"jobs": JOBS, "events_per_job": 10, "in_flight": IN_FLIGHT},
    )
