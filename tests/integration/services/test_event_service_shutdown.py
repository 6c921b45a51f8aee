"""An event service stops in order: no new event taken after SIGTERM, the events in hand
finished and acked (or handed back when cut off), and only then its connections closed."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from uuid import UUID, uuid4

import nats
import pytest
from nats.aio.client import Client
from nats.js.api import ConsumerInfo

from ckrv.events.catalog import JobEvent, parse_event
from ckrv.events.consumer import ConsumerSpec, Delivery, EventConsumer
from ckrv.events.publisher import EventPublisher
from ckrv.events.streams import provision_streams
from ckrv.events.subjects import JOBS_STREAM, job_subjects
from ckrv.services.stack.nats_server import NatsServer
from ckrv.services.stack.ports import free_ports
from tests.conftest import run_on_private_loop
from tests.integration.events.builders import submitted
from tests.integration.services.test_service_runner import wait_for_http

pytestmark = pytest.mark.integration

ACK_WAIT_SECONDS = 30.0
# What stopping may take beyond the shutdown timeout: cancelled work ending, connections closing.
STOP_MARGIN_SECONDS = 5.0
# Signs of connections closed under work still running, or of any other failure.
DISORDER = ("ConnectionDrainingError", "ConnectionClosedError", "Traceback")


@pytest.fixture(scope="module")
def nats_url(servers_dir: Path) -> Iterator[str]:
    """A nats-server of these tests' own: their jobs stay off the one the gateway projects."""
    port, monitor_port = free_ports(2)
    server = NatsServer(servers_dir / "nats-shutdown", port=port, monitor_port=monitor_port)
    run_on_private_loop(server.start())
    try:
        yield server.url
    finally:
        run_on_private_loop(server.stop())


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    client = await nats.connect(nats_url)
    await provision_streams(client.jetstream())
    yield client
    await client.close()


@dataclass
class SlowService:
    """A running `slow_handlers_service` process and the consumer it follows."""

    process: subprocess.Popen[bytes]
    log: Path
    spec: ConsumerSpec
    job_id: UUID
    shutdown_timeout_seconds: float

    def output(self) -> str:
        return self.log.read_text()

    async def wait_for_lines(self, text: str, count: int = 1) -> None:
        while self.output().count(text) < count:
            assert self.process.poll() is None, f"exited early:\n{self.output()}"
            await asyncio.sleep(0.02)

    def handled(self, word: str) -> list[int]:
        """The stream sequences of the log's `<word> <sequence>` lines."""
        prefix = f"slow-handlers: {word} "
        return [int(line.split(prefix)[1]) for line in self.output().splitlines() if prefix in line]

    async def stop(self) -> int:
        """SIGTERM, then the exit code; it must come within the shutdown timeout and a margin."""
        self.process.send_signal(signal.SIGTERM)
        within = self.shutdown_timeout_seconds + STOP_MARGIN_SECONDS
        return await asyncio.to_thread(self.process.wait, within)


class Starter(Protocol):
    def __call__(
        self,
        *,
        handlers: int,
        handle_seconds: float,
        shutdown_timeout_seconds: float = 10.0,
        fetch_timeout_seconds: float = 0.5,
        fail_at_stop: bool = False,
    ) -> SlowService: ...


@pytest.fixture
def start_service(nats_url: str, tmp_path: Path) -> Iterator[Starter]:
    started: list[SlowService] = []

    def start(
        *,
        handlers: int,
        handle_seconds: float,
        shutdown_timeout_seconds: float = 10.0,
        fetch_timeout_seconds: float = 0.5,
        fail_at_stop: bool = False,
    ) -> SlowService:
        job_id = uuid4()
        spec = ConsumerSpec(
            durable=f"slow-{job_id.hex[:12]}",
            stream=JOBS_STREAM,
            filter_subjects=(job_subjects(job_id),),
            ack_wait_seconds=ACK_WAIT_SECONDS,
        )
        (port,) = free_ports(1)
        environment = os.environ | {
            "CKRV_ENV": "dev",
            "CKRV_NATS_URL": nats_url,
            "SLOW_DURABLE": spec.durable,
            "SLOW_SUBJECT": spec.filter_subjects[0],
            "SLOW_HANDLERS": str(handlers),
            "SLOW_HANDLE_SECONDS": str(handle_seconds),
            "SLOW_HTTP_PORT": str(port),
            "SLOW_SHUTDOWN_TIMEOUT_SECONDS": str(shutdown_timeout_seconds),
            "SLOW_ACK_WAIT_SECONDS": str(ACK_WAIT_SECONDS),
            "SLOW_FETCH_TIMEOUT_SECONDS": str(fetch_timeout_seconds),
        }
        if fail_at_stop:
            environment["SLOW_FAIL_AT_STOP"] = "1"
        log = tmp_path / f"{spec.durable}.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                [sys.executable, "-m", "tests.integration.services.slow_handlers_service"],
                env=environment,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        service = SlowService(process, log, spec, job_id, shutdown_timeout_seconds)
        started.append(service)
        wait_for_http(f"http://127.0.0.1:{port}/healthz", process)
        return service

    yield start
    for service in started:
        if service.process.poll() is None:
            service.process.kill()
            service.process.wait()


async def publish(nc: Client, job_id: UUID, count: int, after: int = 0) -> list[int]:
    """Append `count` events of the job after its event at sequence `after`; their sequences."""
    sequences = []
    for number in range(count):
        event = submitted(job_id, spec_id=f"spec-{after}-{number}")
        after = (await EventPublisher(nc).append(event, expected_sequence=after)).sequence
        sequences.append(after)
    return sequences


async def consumer_info(nc: Client, spec: ConsumerSpec) -> ConsumerInfo:
    info = await nc.jetstream().consumer_info(spec.stream, spec.durable)
    assert isinstance(info, ConsumerInfo)  # nats-py leaves `consumer_info` unannotated
    return info


async def redelivered_to_another_replica(
    nc: Client, spec: ConsumerSpec, sequences: Sequence[int]
) -> dict[int, int]:
    """Each of `sequences` as another replica gets it next: its delivery count, by sequence.
    Its ack wait is far longer than this waits: only a message handed back comes in time."""
    deliveries: dict[int, int] = {}
    all_came = asyncio.Event()

    async def record(delivery: Delivery[JobEvent]) -> None:
        deliveries[delivery.stream_sequence] = delivery.num_delivered
        if set(deliveries) == set(sequences):
            all_came.set()

    stop = asyncio.Event()
    consumer = EventConsumer(nc.jetstream(), spec, parse_event, record)
    running = asyncio.create_task(consumer.run(stop))
    try:
        await asyncio.wait_for(all_came.wait(), 10)
    finally:
        stop.set()
        await running
    return deliveries


async def test_sigterm_lets_the_handlers_in_flight_finish_and_takes_nothing_new(
    nc: Client, start_service: Starter
) -> None:
    # More handlers than events: one of them is waiting on a fetch when the signal comes.
    service = start_service(handlers=4, handle_seconds=1.0, fetch_timeout_seconds=5.0)
    in_flight = await publish(nc, service.job_id, 3)
    await service.wait_for_lines("handling", count=len(in_flight))

    service.process.send_signal(signal.SIGTERM)
    await service.wait_for_lines("stopping")
    later = await publish(nc, service.job_id, 2, after=in_flight[-1])
    exit_code = await service.stop()

    output = service.output()
    assert exit_code == 0, output
    assert sorted(service.handled("handling")) == in_flight
    assert sorted(service.handled("handled")) == in_flight
    assert not [sign for sign in DISORDER if sign in output], output
    info = await consumer_info(nc, service.spec)
    assert info.num_ack_pending == 0
    assert info.num_redelivered == 0
    # The events published after the signal were never fetched: they wait for another replica.
    assert info.num_pending == len(later)


async def test_a_handler_cut_off_at_the_shutdown_timeout_hands_its_event_back(
    nc: Client, start_service: Starter
) -> None:
    service = start_service(handlers=2, handle_seconds=3600, shutdown_timeout_seconds=1.0)
    in_flight = await publish(nc, service.job_id, 2)
    await service.wait_for_lines("handling", count=len(in_flight))

    exit_code = await service.stop()

    output = service.output()
    assert exit_code == 0, output
    assert "cancelling slow-handlers work after the shutdown timeout" in output
    assert service.handled("handled") == []
    assert not [sign for sign in DISORDER if sign in output], output
    deliveries = await redelivered_to_another_replica(nc, service.spec, in_flight)
    assert deliveries == dict.fromkeys(in_flight, 2)
    assert (await consumer_info(nc, service.spec)).num_ack_pending == 0


async def test_a_part_failing_at_the_stop_closes_nothing_under_the_handlers(
    nc: Client, start_service: Starter
) -> None:
    service = start_service(handlers=3, handle_seconds=3600, fail_at_stop=True)
    in_flight = await publish(nc, service.job_id, 3)
    await service.wait_for_lines("handling", count=len(in_flight))

    exit_code = await service.stop()

    output = service.output()
    assert exit_code == 1, output
    assert "a part of the work failed at the stop" in output
    # The failure's own traceback is expected; nothing may have failed under closed connections.
    assert "ConnectionDrainingError" not in output
    assert "ConnectionClosedError" not in output
    assert "unhandled exception" not in output
    # The handlers were cancelled with the failed part: their events are another replica's now.
    deliveries = await redelivered_to_another_replica(nc, service.spec, in_flight)
    assert deliveries == dict.fromkeys(in_flight, 2)
