"""Conditional, deduplicated appends against a real nats-server, including racing writers."""

from __future__ import annotations

import asyncio
import functools
from uuid import UUID, uuid4

import nats
import pytest
from nats.aio.client import Client

from ckrv.events.catalog import JobQueued, JobQueuedData
from ckrv.events.publisher import ConcurrencyConflict, EventPublisher
from ckrv.events.state import JobStatus, QueueJob, decide
from ckrv.events.store import JobEventStore
from tests.integration.events.builders import submitted

pytestmark = pytest.mark.integration


def queued(job_id: UUID) -> JobQueued:
    return JobQueued(job_id=job_id, actor="service:dispatcher", data=JobQueuedData(attempt=1))


async def test_first_append_expects_zero_and_a_stale_expectation_conflicts(
    nc: Client, job_id: UUID
) -> None:
    publisher = EventPublisher(nc)
    first = await publisher.append(submitted(job_id), expected_sequence=0)
    assert first.sequence > 0
    assert not first.duplicate

    with pytest.raises(ConcurrencyConflict) as conflict:
        await publisher.append(queued(job_id), expected_sequence=0)
    assert conflict.value.job_id == job_id
    assert conflict.value.expected_sequence == 0

    second = await publisher.append(queued(job_id), expected_sequence=first.sequence)
    assert second.sequence > first.sequence


async def test_publishing_the_same_event_again_returns_the_original_sequence(
    nc: Client, job_id: UUID
) -> None:
    publisher = EventPublisher(nc)
    event = submitted(job_id)
    original = await publisher.append(event, expected_sequence=0)
    again = await publisher.append(event, expected_sequence=0)
    assert again.duplicate
    assert again.sequence == original.sequence
    history = await JobEventStore(nc).read(job_id)
    assert [stored.event.id for stored in history] == [event.id]


async def test_a_retry_after_the_job_moved_on_is_recognised_as_already_appended(
    nc: Client, job_id: UUID
) -> None:
    store = JobEventStore(nc)
    first_event = submitted(job_id)
    first = await store.append(first_event, expected_sequence=0)
    await store.append(queued(job_id), expected_sequence=first.sequence)

    # The writer of the first event never saw its ack and tries again with its old view.
    retried = await store.append(first_event, expected_sequence=0)
    assert retried.duplicate
    assert retried.sequence == first.sequence
    # An event that is really new still loses the race.
    with pytest.raises(ConcurrencyConflict):
        await store.append(queued(job_id), expected_sequence=first.sequence)


async def test_two_concurrent_writers_never_both_transition_a_job(
    provisioned_nats_url: str,
) -> None:
    writers = [await nats.connect(provisioned_nats_url) for _ in range(2)]
    try:
        publishers = [EventPublisher(writer) for writer in writers]
        for _ in range(25):
            job_id = uuid4()
            base = await publishers[0].append(submitted(job_id), expected_sequence=0)
            outcomes = await asyncio.gather(
                *(
                    publisher.append(queued(job_id), expected_sequence=base.sequence)
                    for publisher in publishers
                ),
                return_exceptions=True,
            )
            winners = [outcome for outcome in outcomes if not isinstance(outcome, Exception)]
            losers = [outcome for outcome in outcomes if isinstance(outcome, ConcurrencyConflict)]
            assert len(winners) == 1, outcomes
            assert len(losers) == 1, outcomes
            history = await JobEventStore(writers[0]).read(job_id)
            assert [stored.event.type for stored in history] == ["job.submitted", "job.queued"]
    finally:
        for writer in writers:
            await writer.close()


async def test_racing_decisions_yield_one_transition_and_the_loser_finds_nothing_to_do(
    provisioned_nats_url: str,
) -> None:
    writers = [await nats.connect(provisioned_nats_url) for _ in range(2)]
    try:
        stores = [JobEventStore(writer) for writer in writers]
        for _ in range(10):
            job_id = uuid4()
            await stores[0].append(submitted(job_id), expected_sequence=0)
            # Two dispatcher replicas decide independently: each command has its own event id.
            commands = [QueueJob(actor="service:dispatcher", reason="admitted") for _ in stores]
            results = await asyncio.gather(
                *(
                    store.execute(job_id, functools.partial(decide, command=command))
                    for store, command in zip(stores, commands, strict=True)
                )
            )
            assert sorted(len(result) for result in results) == [0, 1]
            loaded = await stores[1].load(job_id)
            assert loaded.state.status is JobStatus.QUEUED
            assert [stored.event.type for stored in loaded.events] == [
                "job.submitted",
                "job.queued",
            ]
    finally:
        for writer in writers:
            await writer.close()


async def test_history_is_read_across_several_batches(nc: Client, job_id: UUID) -> None:
    store = JobEventStore(nc, batch_size=2)
    appended = [submitted(job_id), *(queued(job_id) for _ in range(5))]
    expected = 0
    for event in appended:
        expected = (await store.append(event, expected_sequence=expected)).sequence
    history = await store.read(job_id)
    assert [stored.event.id for stored in history] == [event.id for event in appended]
    assert history[-1].sequence == expected
    assert (await store.read(job_id, after_sequence=history[2].sequence)) == history[3:]


async def test_a_job_without_events_has_an_empty_history(nc: Client) -> None:
    loaded = await JobEventStore(nc).load(uuid4())
    assert loaded.events == ()
    assert loaded.last_sequence == 0
    assert loaded.state.status is JobStatus.NEW


async def test_deciding_the_same_command_twice_appends_its_event_once(
    nc: Client, job_id: UUID
) -> None:
    store = JobEventStore(nc)
    await store.append(submitted(job_id), expected_sequence=0)
    command = QueueJob(actor="service:dispatcher", reason="admitted")
    first = await store.execute(job_id, lambda state: decide(state, command))
    second = await store.execute(job_id, lambda state: decide(state, command))
    assert len(first) == 1
    assert second == []
    assert [stored.event.type for stored in await store.read(job_id)] == [
        "job.submitted",
        "job.queued",
    ]
