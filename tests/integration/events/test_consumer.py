"""The durable consumer runner against a real nats-server: acks, retries, dead letters, drain."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID

import nats
import pytest
from nats.aio.client import Client
from nats.js.api import ConsumerInfo
from nats.js.errors import NotFoundError
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from ckrv.events import consumer as consumer_module
from ckrv.events.catalog import JobEvent, parse_event
from ckrv.events.consumer import (
    DEAD_LETTER_REASON,
    DELIVERIES,
    ORIGINAL_SEQUENCE,
    ORIGINAL_SUBJECT,
    BatchEventConsumer,
    ConsumerSpec,
    Delivery,
    EventConsumer,
    PermanentError,
    TransientError,
)
from ckrv.events.publisher import EventPublisher
from ckrv.events.streams import DEAD_LETTER_STREAM
from ckrv.events.subjects import JOBS_STREAM, dead_letter_subject, job_subjects
from ckrv.services.common.db import create_engine, create_schema, session_factory
from ckrv.services.common.inbox import claim_event
from ckrv.services.stack.nats_server import NatsServer
from tests.integration.events.builders import submitted

pytestmark = pytest.mark.integration

Handler = Callable[[Delivery[JobEvent]], Awaitable[None]]


def spec_for(job_id: UUID, **overrides: object) -> ConsumerSpec:
    options: dict[str, object] = {
        "durable": f"test-{job_id.hex[:12]}",
        "stream": JOBS_STREAM,
        "filter_subjects": (job_subjects(job_id),),
        "max_deliver": 3,
        "ack_wait_seconds": 2.0,
        "retry_delays": (0.05,),
        "fetch_timeout_seconds": 0.2,
    } | overrides
    return ConsumerSpec(**options)  # type: ignore[arg-type]


@asynccontextmanager
async def running(nc: Client, spec: ConsumerSpec, handler: Handler) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    consumer = EventConsumer(nc.jetstream(), spec, parse_event, handler)
    await consumer.ensure_consumer()
    task = asyncio.create_task(consumer.run(stop))
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)


async def crash_after(nats_url: str, spec: ConsumerSpec, work: Handler) -> None:
    """A consumer process that dies once `work` has returned for a message: no ack, no nak,
    its connection gone. The message comes back to the next process after the ack wait."""
    process = await nats.connect(nats_url)
    worked = asyncio.Event()

    async def works_then_hangs(delivery: Delivery[JobEvent]) -> None:
        await work(delivery)
        worked.set()
        await asyncio.Event().wait()

    consumer = EventConsumer(process.jetstream(), spec, parse_event, works_then_hangs)
    crashing = asyncio.create_task(consumer.run(asyncio.Event()))
    try:
        await asyncio.wait_for(worked.wait(), 10)
    finally:
        crashing.cancel()
        await asyncio.gather(crashing, return_exceptions=True)
        await process.close()


async def eventually(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def metric(name: str, spec: ConsumerSpec, **labels: str) -> float | None:
    """A sample of the consumer's Prometheus metrics, as /metrics would show it."""
    return REGISTRY.get_sample_value(name, {"consumer": spec.durable, **labels})


async def consumer_info(nc: Client, spec: ConsumerSpec) -> ConsumerInfo:
    info = await nc.jetstream().consumer_info(spec.stream, spec.durable)
    assert isinstance(info, ConsumerInfo)  # nats-py leaves `consumer_info` unannotated
    return info


async def last_dead_letter(nc: Client, spec: ConsumerSpec) -> tuple[dict[str, str], bytes]:
    """The newest dead letter of the consumer, waiting for it to arrive."""
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        try:
            message = await nc.jetstream().get_last_msg(
                DEAD_LETTER_STREAM, dead_letter_subject(spec.durable)
            )
        except NotFoundError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.05)
            continue
        return dict(message.headers or {}), message.data or b""


async def assert_delivered_again_and_acked(nc: Client, spec: ConsumerSpec) -> None:
    """The consumer's one event comes a second time, and is acked then."""
    deliveries: list[int] = []

    async def completes(delivery: Delivery[JobEvent]) -> None:
        deliveries.append(delivery.num_delivered)

    async with running(nc, spec, completes):
        await eventually(lambda: bool(deliveries))
    assert deliveries == [2]
    assert (await consumer_info(nc, spec)).num_ack_pending == 0


async def test_each_event_is_handled_once_in_order_and_acked(nc: Client, job_id: UUID) -> None:
    publisher = EventPublisher(nc)
    events = [submitted(job_id, spec_id=f"spec-{number}") for number in range(5)]
    expected = 0
    for event in events:
        expected = (await publisher.append(event, expected_sequence=expected)).sequence
    # The same event published again is dropped by the stream's dedupe window.
    await nc.jetstream().publish(
        events[0].subject,
        events[0].model_dump_json().encode(),
        headers={"Nats-Msg-Id": str(events[0].id)},
    )

    seen: list[UUID] = []

    async def handler(delivery: Delivery[JobEvent]) -> None:
        seen.append(delivery.payload.id)

    spec = spec_for(job_id)
    async with running(nc, spec, handler):
        await eventually(lambda: len(seen) == len(events))
        await asyncio.sleep(0.3)
    assert seen == [event.id for event in events]
    info = await consumer_info(nc, spec)
    assert info.num_pending == 0
    assert info.num_ack_pending == 0
    assert metric("ckrv_consumer_messages_total", spec, outcome="acked") == len(events)
    assert metric("ckrv_consumer_lag_messages", spec) == 0


async def test_a_crash_before_ack_redelivers(
    provisioned_nats_url: str, nc: Client, job_id: UUID
) -> None:
    spec = spec_for(job_id, ack_wait_seconds=1.0)
    await EventPublisher(nc).append(submitted(job_id), expected_sequence=0)

    async def nothing(_: Delivery[JobEvent]) -> None:
        pass

    await crash_after(provisioned_nats_url, spec, nothing)
    await assert_delivered_again_and_acked(nc, spec)


@pytest.fixture
async def effects(postgres_server: Any) -> AsyncIterator[AsyncEngine]:
    """The database a handler applies its effects to, with the services' inbox table."""
    await create_schema(postgres_server.dsn)
    engine = create_engine(postgres_server.dsn)
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "create table if not exists consumer_test_effects"
                " (event_id uuid not null, delivery int not null)"
            )
        )
    yield engine
    await engine.dispose()


async def apply_once(engine: AsyncEngine, spec: ConsumerSpec, delivery: Delivery[JobEvent]) -> bool:
    """Apply the event's effect as the services do: claimed by event id in the same
    transaction. False when an earlier delivery's claim and effect were already committed."""
    async with session_factory(engine)() as session, session.begin():
        if not await claim_event(session, spec.durable, delivery.payload.id):
            return False
        await session.execute(
            text("insert into consumer_test_effects values (:event_id, :delivery)"),
            {"event_id": delivery.payload.id, "delivery": delivery.num_delivered},
        )
        return True


async def test_a_redelivery_after_the_effect_was_committed_changes_nothing_and_is_acked(
    provisioned_nats_url: str, nc: Client, job_id: UUID, effects: AsyncEngine
) -> None:
    spec = spec_for(job_id, ack_wait_seconds=1.0)
    event = submitted(job_id)
    await EventPublisher(nc).append(event, expected_sequence=0)

    async def first_delivery(delivery: Delivery[JobEvent]) -> None:
        assert await apply_once(effects, spec, delivery)

    # The effect is committed, then the process dies before it acks.
    await crash_after(provisioned_nats_url, spec, first_delivery)
    outcomes: list[tuple[int, bool]] = []

    async def idempotent(delivery: Delivery[JobEvent]) -> None:
        outcomes.append((delivery.num_delivered, await apply_once(effects, spec, delivery)))

    async with running(nc, spec, idempotent):
        await eventually(lambda: bool(outcomes))
    assert outcomes == [(2, False)]
    async with effects.connect() as connection:
        applied = await connection.execute(
            text("select delivery from consumer_test_effects where event_id = :event_id"),
            {"event_id": event.id},
        )
        assert applied.scalars().all() == [1]
    # The duplicate was acked: nothing left to deliver or to come back, nothing dead-lettered.
    info = await consumer_info(nc, spec)
    assert info.num_pending == 0
    assert info.num_ack_pending == 0
    assert metric("ckrv_consumer_messages_total", spec, outcome="acked") == 1
    assert metric("ckrv_consumer_messages_total", spec, outcome="dead_lettered") is None
    with pytest.raises(NotFoundError):
        await nc.jetstream().get_last_msg(DEAD_LETTER_STREAM, dead_letter_subject(spec.durable))


async def test_malformed_json_is_dead_lettered_with_the_reason_and_the_consumer_goes_on(
    nc: Client, job_id: UUID
) -> None:
    js = nc.jetstream()
    poison = await js.publish(f"jobs.{job_id}.submitted", b"{not json")
    await EventPublisher(nc).append(submitted(job_id), expected_sequence=poison.seq)
    handled: list[str] = []

    async def handler(delivery: Delivery[JobEvent]) -> None:
        handled.append(delivery.payload.type)

    spec = spec_for(job_id)
    async with running(nc, spec, handler):
        await eventually(lambda: handled == ["job.submitted"])
    headers, payload = await last_dead_letter(nc, spec)
    assert payload == b"{not json"
    assert "not valid JSON" in headers[DEAD_LETTER_REASON]
    assert headers[ORIGINAL_SUBJECT] == f"jobs.{job_id}.submitted"
    assert headers[ORIGINAL_SEQUENCE] == str(poison.seq)


async def test_an_unknown_event_version_is_dead_lettered_naming_type_and_version(
    nc: Client, job_id: UUID
) -> None:
    document = json.loads(submitted(job_id).model_dump_json())
    document["version"] = 99
    await nc.jetstream().publish(f"jobs.{job_id}.submitted", json.dumps(document).encode())

    async def handler(_: Delivery[JobEvent]) -> None:
        raise AssertionError("an undecodable event must not reach the handler")

    spec = spec_for(job_id)
    async with running(nc, spec, handler):
        headers, _ = await last_dead_letter(nc, spec)
    assert "job.submitted" in headers[DEAD_LETTER_REASON]
    assert "99" in headers[DEAD_LETTER_REASON]
    assert (await consumer_info(nc, spec)).num_ack_pending == 0


async def test_a_permanent_failure_is_dead_lettered_at_once(nc: Client, job_id: UUID) -> None:
    await EventPublisher(nc).append(submitted(job_id), expected_sequence=0)
    calls: list[int] = []

    async def handler(delivery: Delivery[JobEvent]) -> None:
        calls.append(delivery.num_delivered)
        raise PermanentError("the repository URL points nowhere")

    spec = spec_for(job_id)
    async with running(nc, spec, handler):
        await eventually(lambda: bool(calls))
        await asyncio.sleep(0.3)
    assert calls == [1]
    headers, _ = await last_dead_letter(nc, spec)
    assert "the repository URL points nowhere" in headers[DEAD_LETTER_REASON]


async def test_transient_failures_retry_until_the_delivery_limit_then_dead_letter(
    nc: Client, job_id: UUID
) -> None:
    await EventPublisher(nc).append(submitted(job_id), expected_sequence=0)
    calls: list[int] = []

    async def handler(delivery: Delivery[JobEvent]) -> None:
        calls.append(delivery.num_delivered)
        raise TransientError("database unavailable", retry_after=0.05)

    spec = spec_for(job_id, max_deliver=3)
    async with running(nc, spec, handler):
        await eventually(lambda: len(calls) == 3)
        await asyncio.sleep(0.3)
    assert calls == [1, 2, 3]
    assert metric("ckrv_consumer_messages_total", spec, outcome="retried") == 2
    assert metric("ckrv_consumer_messages_total", spec, outcome="dead_lettered") == 1
    headers, _ = await last_dead_letter(nc, spec)
    assert "gave up after 3 deliveries" in headers[DEAD_LETTER_REASON]
    assert headers[DELIVERIES] == "3"
    assert (await consumer_info(nc, spec)).num_ack_pending == 0


async def test_a_transient_failure_that_clears_is_handled_on_redelivery(
    nc: Client, job_id: UUID
) -> None:
    await EventPublisher(nc).append(submitted(job_id), expected_sequence=0)
    calls: list[int] = []

    async def handler(delivery: Delivery[JobEvent]) -> None:
        calls.append(delivery.num_delivered)
        if delivery.num_delivered == 1:
            raise ConnectionError("peer restarting")

    spec = spec_for(job_id)
    async with running(nc, spec, handler):
        await eventually(lambda: calls == [1, 2])
    assert (await consumer_info(nc, spec)).num_ack_pending == 0


async def test_stopping_lets_the_message_in_hand_finish_and_acks_it(
    nc: Client, job_id: UUID
) -> None:
    await EventPublisher(nc).append(submitted(job_id), expected_sequence=0)
    started = asyncio.Event()
    finished: list[bool] = []

    async def slow(_: Delivery[JobEvent]) -> None:
        started.set()
        await asyncio.sleep(0.5)
        finished.append(True)

    spec = spec_for(job_id)
    async with running(nc, spec, slow) as stop:
        await asyncio.wait_for(started.wait(), 10)
        stop.set()
    assert finished == [True]
    info = await consumer_info(nc, spec)
    assert info.num_ack_pending == 0
    assert info.num_redelivered == 0


async def test_stopping_abandons_a_fetch_under_way_so_nothing_more_is_taken(
    nc: Client, job_id: UUID
) -> None:
    handled: list[UUID] = []

    async def handler(delivery: Delivery[JobEvent]) -> None:
        handled.append(delivery.payload.id)

    # A fetch window far longer than the test: the consumer is waiting in it at the stop.
    spec = spec_for(job_id, fetch_timeout_seconds=30.0)
    async with running(nc, spec, handler) as stop:
        await asyncio.sleep(0.3)
        stop.set()
    await EventPublisher(nc).append(submitted(job_id), expected_sequence=0)
    await asyncio.sleep(0.3)
    assert handled == []
    info = await consumer_info(nc, spec)
    # Left for the next consumer to take: not delivered here and handed back.
    assert info.num_pending == 1
    assert info.num_ack_pending == 0


async def test_a_handler_cut_off_hands_its_message_back_at_once(nc: Client, job_id: UUID) -> None:
    await EventPublisher(nc).append(submitted(job_id), expected_sequence=0)
    started = asyncio.Event()

    async def never_done(_: Delivery[JobEvent]) -> None:
        started.set()
        await asyncio.Event().wait()

    # An ack wait longer than the test waits: only a message handed back comes again in time.
    spec = spec_for(job_id, ack_wait_seconds=60.0)
    consumer = EventConsumer(nc.jetstream(), spec, parse_event, never_done)
    cut_off = asyncio.create_task(consumer.run(asyncio.Event()))
    await asyncio.wait_for(started.wait(), 10)
    cut_off.cancel()
    await asyncio.gather(cut_off, return_exceptions=True)
    assert cut_off.cancelled()

    await assert_delivered_again_and_acked(nc, spec)


BatchHandler = Callable[[Sequence[Delivery[JobEvent]]], Awaitable[None]]


@asynccontextmanager
async def running_batches(
    nc: Client, spec: ConsumerSpec, handler: BatchHandler
) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    consumer = BatchEventConsumer(nc.jetstream(), spec, parse_event, handler)
    await consumer.ensure_consumer()
    task = asyncio.create_task(consumer.run(stop))
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)


async def append_all(nc: Client, events: Sequence[JobEvent], after: int = 0) -> int:
    """Append `events` after the job's event at sequence `after`; the last one's sequence."""
    expected = after
    for event in events:
        expected = (await EventPublisher(nc).append(event, expected_sequence=expected)).sequence
    return expected


async def test_a_batch_handler_gets_a_fetch_at_once_in_order_and_all_are_acked(
    nc: Client, job_id: UUID
) -> None:
    events = [submitted(job_id, spec_id=f"spec-{number}") for number in range(5)]
    await append_all(nc, events)
    batches: list[list[UUID]] = []

    async def handler(deliveries: Sequence[Delivery[JobEvent]]) -> None:
        batches.append([delivery.payload.id for delivery in deliveries])

    spec = spec_for(job_id)
    async with running_batches(nc, spec, handler):
        await eventually(lambda: sum(map(len, batches)) == len(events))
        await asyncio.sleep(0.3)
    # Waiting before the consumer started, all five come in one fetch and one call.
    assert batches == [[event.id for event in events]]
    info = await consumer_info(nc, spec)
    assert info.num_pending == 0
    assert info.num_ack_pending == 0
    assert metric("ckrv_consumer_messages_total", spec, outcome="acked") == len(events)


async def test_a_failed_batch_is_handled_again_one_message_at_a_time(
    nc: Client, job_id: UUID
) -> None:
    events = [submitted(job_id, spec_id=name) for name in ("first", "poison", "last")]
    await append_all(nc, events)
    calls: list[list[str]] = []

    async def handler(deliveries: Sequence[Delivery[JobEvent]]) -> None:
        names = [str(getattr(delivery.payload.data, "spec_id", "")) for delivery in deliveries]
        calls.append(names)
        if "poison" in names:
            raise PermanentError("this spec can never be handled")

    spec = spec_for(job_id)
    async with running_batches(nc, spec, handler):
        await eventually(lambda: len(calls) == 4)
        await asyncio.sleep(0.3)
    # The batch fails; then each message alone: only the poisoned one is dead-lettered.
    assert calls == [["first", "poison", "last"], ["first"], ["poison"], ["last"]]
    headers, _ = await last_dead_letter(nc, spec)
    assert "this spec can never be handled" in headers[DEAD_LETTER_REASON]
    assert metric("ckrv_consumer_messages_total", spec, outcome="acked") == 2
    assert metric("ckrv_consumer_messages_total", spec, outcome="dead_lettered") == 1
    assert (await consumer_info(nc, spec)).num_ack_pending == 0


async def test_an_undecodable_message_is_dead_lettered_and_the_rest_handled_as_a_batch(
    nc: Client, job_id: UUID
) -> None:
    first = submitted(job_id, spec_id="first")
    await append_all(nc, [first])
    poison = await nc.jetstream().publish(f"jobs.{job_id}.submitted", b"{not json")
    last = submitted(job_id, spec_id="last")
    await append_all(nc, [last], after=poison.seq)
    batches: list[list[UUID]] = []

    async def handler(deliveries: Sequence[Delivery[JobEvent]]) -> None:
        batches.append([delivery.payload.id for delivery in deliveries])

    spec = spec_for(job_id)
    async with running_batches(nc, spec, handler):
        await eventually(lambda: sum(map(len, batches)) == 2)
        headers, payload = await last_dead_letter(nc, spec)
    assert batches == [[first.id, last.id]]
    assert payload == b"{not json"
    assert headers[ORIGINAL_SEQUENCE] == str(poison.seq)
    assert (await consumer_info(nc, spec)).num_ack_pending == 0


async def test_a_transiently_failing_batch_is_retried_until_it_succeeds(
    nc: Client, job_id: UUID
) -> None:
    events = [submitted(job_id, spec_id=f"spec-{number}") for number in range(3)]
    await append_all(nc, events)
    handled: list[tuple[UUID, int]] = []
    failures = 0

    async def handler(deliveries: Sequence[Delivery[JobEvent]]) -> None:
        nonlocal failures
        # The database is down for the batch and for each message alone once.
        if failures < 1 + len(events):
            failures += 1
            raise TransientError("database unavailable", retry_after=0.05)
        handled.extend((delivery.payload.id, delivery.num_delivered) for delivery in deliveries)

    spec = spec_for(job_id)
    async with running_batches(nc, spec, handler):
        await eventually(lambda: len(handled) == len(events))
        await asyncio.sleep(0.3)
    assert sorted(handled) == sorted((event.id, 2) for event in events)
    assert metric("ckrv_consumer_messages_total", spec, outcome="retried") == len(events)
    assert (await consumer_info(nc, spec)).num_ack_pending == 0


async def test_a_busy_stream_lingers_between_fetches_so_the_next_batch_is_larger(
    nc: Client, job_id: UUID
) -> None:
    events = [submitted(job_id, spec_id=f"spec-{number}") for number in range(5)]
    last = await append_all(nc, events[:2])
    batches: list[tuple[float, list[UUID]]] = []

    async def handler(deliveries: Sequence[Delivery[JobEvent]]) -> None:
        now = asyncio.get_running_loop().time()
        batches.append((now, [delivery.payload.id for delivery in deliveries]))

    spec = spec_for(job_id, batch_size=10, linger_seconds=0.5)
    async with running_batches(nc, spec, handler):
        await eventually(lambda: bool(batches))
        # Arriving one by one while the consumer lingers after a batch of two.
        for event in events[2:]:
            last = await append_all(nc, [event], after=last)
        await eventually(lambda: sum(len(ids) for _, ids in batches) == len(events))
    assert [ids for _, ids in batches] == [
        [event.id for event in events[:2]],
        [event.id for event in events[2:]],
    ]
    assert batches[1][0] - batches[0][0] >= 0.4


async def test_a_lone_message_does_not_make_the_next_one_wait(nc: Client, job_id: UUID) -> None:
    first, second = submitted(job_id, spec_id="first"), submitted(job_id, spec_id="second")
    last = await append_all(nc, [first])
    handled: list[UUID] = []

    async def handler(deliveries: Sequence[Delivery[JobEvent]]) -> None:
        handled.extend(delivery.payload.id for delivery in deliveries)

    spec = spec_for(job_id, batch_size=10, linger_seconds=30.0)
    async with running_batches(nc, spec, handler):
        await eventually(lambda: handled == [first.id])
        await append_all(nc, [second], after=last)
        await eventually(lambda: handled == [first.id, second.id], within=5.0)


async def test_a_consumer_waits_out_jetstream_out_of_reach_then_handles_its_events(
    events_nats_server: NatsServer, nc: Client, job_id: UUID, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[UUID] = []

    async def handler(delivery: Delivery[JobEvent]) -> None:
        seen.append(delivery.payload.id)

    # Short API timeouts: the frozen server's silence shows in half a second.
    consumer = EventConsumer(nc.jetstream(timeout=0.5), spec_for(job_id), parse_event, handler)
    assert events_nats_server.process is not None
    server_pid = events_nats_server.process.pid
    assert server_pid is not None
    stop = asyncio.Event()
    os.kill(server_pid, signal.SIGSTOP)  # alive but answering nothing, as a busy server is
    try:
        running = asyncio.create_task(consumer.run(stop))
        await eventually(lambda: "cannot create the consumer" in caplog.text)
        assert not running.done()
    finally:
        os.kill(server_pid, signal.SIGCONT)
    try:
        event = submitted(job_id)
        await EventPublisher(nc).append(event, expected_sequence=0)
        await eventually(lambda: seen == [event.id])
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)
    assert "JetStream did not answer (TimeoutError)" in caplog.text


async def test_a_consumer_carries_on_across_a_restart_of_the_nats_server(
    events_nats_server: NatsServer, provisioned_nats_url: str, job_id: UUID
) -> None:
    seen: list[UUID] = []

    async def handler(delivery: Delivery[JobEvent]) -> None:
        seen.append(delivery.payload.id)

    client = await nats.connect(provisioned_nats_url, reconnect_time_wait=0.2)
    try:
        async with running(client, spec_for(job_id), handler):
            first = submitted(job_id)
            sequence = (await EventPublisher(client).append(first, expected_sequence=0)).sequence
            await eventually(lambda: seen == [first.id])
            await events_nats_server.stop()
            await events_nats_server.start()
            second = submitted(job_id, spec_id="after-restart")
            await EventPublisher(client).append(second, expected_sequence=sequence)
            await eventually(lambda: seen == [first.id, second.id], within=20)
    finally:
        await client.close()


async def test_an_ack_that_times_out_neither_ends_the_consumer_nor_loses_the_event(
    events_nats_server: NatsServer,
    nc: Client,
    job_id: UUID,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(consumer_module, "ACK_TIMEOUT_SECONDS", 0.3)
    assert events_nats_server.process is not None
    server_pid = events_nats_server.process.pid
    assert server_pid is not None
    entered, release = asyncio.Event(), asyncio.Event()
    seen: list[UUID] = []

    async def handler(delivery: Delivery[JobEvent]) -> None:
        entered.set()
        await release.wait()
        seen.append(delivery.payload.id)

    spec = spec_for(job_id)
    publisher = EventPublisher(nc)
    first, second = submitted(job_id), submitted(job_id, spec_id="second")
    async with running(nc, spec, handler):
        sequence = (await publisher.append(first, expected_sequence=0)).sequence
        await asyncio.wait_for(entered.wait(), 10)
        os.kill(server_pid, signal.SIGSTOP)  # the ack goes unanswered
        try:
            release.set()
            await eventually(lambda: "fate did not reach JetStream (TimeoutError)" in caplog.text)
        finally:
            os.kill(server_pid, signal.SIGCONT)
        await publisher.append(second, expected_sequence=sequence)
        # The first comes again if its ack was lost on the way, not if it arrived late.
        await eventually(lambda: seen[-1:] == [second.id] and seen[0] == first.id)
    assert set(seen) == {first.id, second.id}
    info = await consumer_info(nc, spec)
    assert (info.num_pending, info.num_ack_pending) == (0, 0)
