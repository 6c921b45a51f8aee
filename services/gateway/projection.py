"""The jobs read model: each job's events folded into one `jobs` row.

A delivery only says "job J has news up to sequence S". The projector reads
J's history after the row's `last_sequence` and folds all of it, so events of
one job handled out of order by different gateway replicas, redelivered, or
duplicated can never skip or repeat a transition. Rebuilding replays JOBS from
the start and yields the same rows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from nats.aio.client import Client
from nats.js.api import DeliverPolicy
from sqlalchemy import ARRAY, BigInteger, Uuid, bindparam, delete, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from ckrv.events.catalog import JobEvent, JobRejected, feature_branch_name, parse_event
from ckrv.events.consumer import ConsumerSpec
from ckrv.events.history import StoredEvent, read_job_history
from ckrv.events.state import JobState, api_status, evolve, initial_state
from ckrv.events.subjects import JOBS_STREAM, JOBS_SUBJECTS
from ckrv.schemas.api import JobStatus
from ckrv.services.gateway.tables import JobRecord, QuotaCharge, User

PROJECTOR_CONSUMER = "gateway-projector"
_RESULT_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.TIMEOUT})


def projector_spec() -> ConsumerSpec:
    return ConsumerSpec(
        durable=PROJECTOR_CONSUMER,
        stream=JOBS_STREAM,
        filter_subjects=(JOBS_SUBJECTS,),
        ack_wait_seconds=30.0,
        retry_delays=(0.2, 1.0, 5.0, 30.0),
        max_deliver=10,
        fetch_timeout_seconds=0.5,
        batch_size=256,
        deliver_policy=DeliverPolicy.ALL,
        # Under load, a batch every 20 ms folds many events in one transaction.
        linger_seconds=0.02,
    )


def record_values(state: JobState, last_sequence: int) -> dict[str, Any]:
    """The `jobs` row for a folded state: a pure function, so replay gives identical rows."""
    assert state.user_id is not None
    assert state.spec_id is not None
    assert state.git_repo_url is not None
    assert state.git_base_branch is not None
    assert state.created_at is not None
    status = JobStatus(api_status(state).value)
    return {
        "id": state.job_id,
        "user_id": UUID(state.user_id),
        "status": status.value,
        "phase": state.phase.value if state.phase else None,
        "attempt": state.attempt,
        "spec_id": state.spec_id,
        "git_repo_url": state.git_repo_url,
        "git_base_branch": state.git_base_branch,
        "git_credential_name": state.git_credential_name,
        "feature_branch_name": feature_branch_name(state.job_id),
        "created_at": state.created_at,
        "started_at": state.started_at,
        "completed_at": state.completed_at,
        "result_status": status.value if status in _RESULT_STATUSES else None,
        "result_summary": state.result_summary,
        "error_message": state.error_message,
        "metrics": dict(state.metrics) if state.metrics else None,
        "cancel_requested": state.cancel_requested,
        "last_sequence": last_sequence,
        "state": _stored_state(state),
    }


def _stored_state(state: JobState) -> dict[str, Any]:
    stored = state.model_dump(mode="json")
    # A set's order depends on how it was built (folded at once, or continued from a row):
    # sorted, the same history always gives the same row.
    stored["seen_event_ids"] = sorted(stored["seen_event_ids"])
    return stored


def record_for(state: JobState, last_sequence: int) -> JobRecord:
    return JobRecord(**record_values(state, last_sequence))


async def apply_history(
    session: AsyncSession, job_id: UUID, history: Sequence[StoredEvent]
) -> JobRecord | None:
    """Fold `history` (events after the row's `last_sequence`) into the job's row."""
    row = await session.get(JobRecord, job_id, with_for_update=True, populate_existing=True)
    return await _fold(session, job_id, row, history)


async def _fold(
    session: AsyncSession, job_id: UUID, row: JobRecord | None, history: Sequence[StoredEvent]
) -> JobRecord | None:
    """Fold `history` into `row`, the job's row locked by the caller (None: no row yet)."""
    last_sequence = row.last_sequence if row is not None else 0
    fresh = [stored for stored in history if stored.sequence > last_sequence]
    if not fresh:
        return row
    state = JobState.model_validate(row.state) if row is not None else initial_state(job_id)
    for stored in fresh:
        state = evolve(state, stored.event)
    if state.user_id is None:
        # Events of a job whose submission is not on the stream: nothing to show anyone.
        return row
    values = record_values(state, fresh[-1].sequence)
    if row is None:
        row = JobRecord(**values)
        session.add(row)
    else:
        for name, value in values.items():
            setattr(row, name, value)
    if any(isinstance(stored.event, JobRejected) for stored in fresh):
        await _refund(session, job_id)
    return row


async def _refund(session: AsyncSession, job_id: UUID) -> None:
    """A job refused before it started does not count against the quota."""
    # The owner's row first, as submissions lock it to count and charge: the two never
    # interleave, so a charge made meanwhile is seen here and the other way round.
    owner = select(col(QuotaCharge.user_id)).where(col(QuotaCharge.job_id) == job_id)
    await session.execute(
        select(col(User.id)).where(col(User.id) == owner.scalar_subquery()).with_for_update()
    )
    charge = await session.get(QuotaCharge, job_id, with_for_update=True)
    if charge is None or charge.refunded_at is not None:
        return
    charge.refunded_at = datetime.now(UTC)
    if charge.overage:
        return
    # An included place given back goes to the cycle's first job billed as an extra one.
    first_billed = await session.scalar(
        select(QuotaCharge)
        .where(
            col(QuotaCharge.user_id) == charge.user_id,
            col(QuotaCharge.cycle_start) == charge.cycle_start,
            col(QuotaCharge.overage),
            col(QuotaCharge.refunded_at).is_(None),
        )
        .order_by(col(QuotaCharge.charged_at), col(QuotaCharge.job_id))
        .limit(1)
        .with_for_update()
    )
    if first_billed is not None:
        first_billed.overage = False
        first_billed.amount_cents = 0


async def project_job(session: AsyncSession, nc: Client, job_id: UUID, up_to_sequence: int) -> None:
    """Bring the job's row up to at least `up_to_sequence`, in the session's transaction."""
    await project_jobs(session, nc, {job_id: up_to_sequence})


# Rows written at acceptance from a job's submission, and untouched since (sequence 0, that
# one event folded), take the submission's stream sequence: all the fold would change.
_RECORD_SUBMISSIONS = (
    text(
        "UPDATE jobs SET last_sequence = news.sequence"
        " FROM unnest(:ids, :event_ids, :sequences) AS news (id, event_id, sequence)"
        " WHERE jobs.id = news.id AND jobs.last_sequence = 0"
        " AND jobs.state::jsonb -> 'seen_event_ids' = jsonb_build_array(news.event_id::text)"
        " RETURNING jobs.id"
    )
    .bindparams(
        bindparam("ids", type_=ARRAY(Uuid())),
        bindparam("event_ids", type_=ARRAY(Uuid())),
        bindparam("sequences", type_=ARRAY(BigInteger())),
    )
    .columns(id=Uuid())
)


async def project_jobs(
    session: AsyncSession,
    nc: Client,
    news: Mapping[UUID, int],
    submissions: Mapping[UUID, StoredEvent] | None = None,
) -> None:
    """Bring each job's row up to at least its sequence in `news`, in the session's transaction.

    `submissions` are `job.submitted` events in hand, by job. A job accepted by the gateway
    has its row written with the submission already folded in, before the event is on JOBS;
    while that row has folded nothing else, taking the event's sequence is the whole fold.
    One statement does that for all such jobs. The others' rows are locked in one statement
    (in id order, so two replicas never wait on each other crosswise), and their histories
    after the row's sequence read concurrently and folded.
    """
    recordable = [
        event for job_id, event in (submissions or {}).items() if news.get(job_id) == event.sequence
    ]
    if recordable:
        recorded = set(
            await session.scalars(
                _RECORD_SUBMISSIONS,
                {
                    "ids": [stored.event.job_id for stored in recordable],
                    "event_ids": [stored.event.id for stored in recordable],
                    "sequences": [stored.sequence for stored in recordable],
                },
            )
        )
        news = {job_id: sequence for job_id, sequence in news.items() if job_id not in recorded}
        if not news:
            return
    rows = {
        row.id: row
        for row in await session.scalars(
            select(JobRecord)
            .where(col(JobRecord.id).in_(sorted(news)))
            .order_by(col(JobRecord.id))
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    }
    behind = {
        job_id: rows[job_id].last_sequence if job_id in rows else 0
        for job_id, sequence in news.items()
        if sequence > (rows[job_id].last_sequence if job_id in rows else 0)
    }
    histories = await asyncio.gather(
        *(read_job_history(nc, job_id, after_sequence=after) for job_id, after in behind.items())
    )
    for job_id, history in zip(behind, histories, strict=True):
        await _fold(session, job_id, rows.get(job_id), history)


async def read_all_events(nc: Client) -> list[StoredEvent]:
    """Every event on JOBS, oldest first, through an ephemeral ordered consumer."""
    js = nc.jetstream()
    info = await js.stream_info(JOBS_STREAM)
    last = info.state.last_seq
    events: list[StoredEvent] = []
    if info.state.messages == 0:
        return events
    subscription = await js.subscribe(JOBS_SUBJECTS, ordered_consumer=True, stream=JOBS_STREAM)
    try:
        while True:
            message = await subscription.next_msg(timeout=10)
            sequence = message.metadata.sequence.stream
            event = _decode_or_none(message.data)
            if event is not None:
                events.append(StoredEvent(sequence, event))
            if sequence >= last:
                break
    finally:
        await subscription.unsubscribe()
    return events


def _decode_or_none(data: bytes) -> JobEvent | None:
    # The live projector dead-letters what it cannot read; a rebuild skips the same.
    try:
        return parse_event(data)
    except ValueError:
        return None


async def rebuild_projection(session: AsyncSession, nc: Client) -> int:
    """Replace every row with one folded from JOBS, from the first event; returns the count."""
    by_job: dict[UUID, list[StoredEvent]] = {}
    for stored in await read_all_events(nc):
        by_job.setdefault(stored.event.job_id, []).append(stored)
    await session.execute(delete(JobRecord).where(col(JobRecord.last_sequence) > 0))
    rebuilt = 0
    for job_id, history in by_job.items():
        row = await session.get(JobRecord, job_id)
        if row is not None:
            # Only the submission was known (its event was not yet confirmed): start over.
            await session.delete(row)
            await session.flush()
        if await apply_history(session, job_id, history) is not None:
            rebuilt += 1
    return rebuilt
