"""`GET /v1/events`: the caller's job events as Server-Sent Events, for dashboards and scripts.

Each event is one SSE event: `id` = its JOBS stream sequence, `event` = its type,
`data` = the event as stored (the same JSON the event catalog's schemas describe).
A client that reconnects with `Last-Event-ID` resumes right after that event; one
that sends none gets the events from now on (`last_event_id=0` replays from the
start). Only events of the caller's own jobs are sent, optionally only of one job
and of some types.

The feed reads JOBS through an ordered consumer of its own, whose buffer is bounded:
a client that reads slowly makes the consumer fall behind and catch up again from
the last event it took, instead of growing the gateway's memory.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse
from nats.js.api import ConsumerConfig, DeliverPolicy
from sqlalchemy import select
from sqlmodel import col

from ckrv.events.catalog import EVENT_TYPES, parse_event
from ckrv.events.subjects import JOBS_STREAM, JOBS_SUBJECTS, job_subjects
from ckrv.services.gateway.auth import CallerId
from ckrv.services.gateway.context import ContextDep, GatewayContext
from ckrv.services.gateway.errors import not_found, validation_error
from ckrv.services.gateway.log_stream import HEADERS, HEARTBEAT, MEDIA_TYPE, resume_id, retry_field
from ckrv.services.gateway.tables import JobRecord

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/events", tags=["Events"])

# Events buffered for one feed before its consumer pauses and later catches up.
FEED_BUFFER_EVENTS = 512

STREAM_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-Sent Events: `id` the stream sequence, `event` the type, "
        "`data` the event.",
        "content": {MEDIA_TYPE: {"schema": {"type": "string"}}},
    },
    401: {"description": "Missing or invalid token (`unauthorized`)."},
    404: {"description": "No such job for this user (`not_found`)."},
    422: {"description": "Unknown event type or bad event id (`validation_error`)."},
}


@router.get("", response_class=StreamingResponse, responses=STREAM_RESPONSE)
async def job_events(
    *,
    user_id: CallerId,
    context: ContextDep,
    job: Annotated[UUID | None, Query(description="Only this job's events.")] = None,
    event_type: Annotated[
        list[str] | None,
        Query(alias="type", description="Only events of these types (repeat the parameter)."),
    ] = None,
    last_event_id: Annotated[
        str | None, Query(max_length=20, description="Resume after this event id.")
    ] = None,
    last_event_id_header: Annotated[
        str | None, Header(alias="Last-Event-ID", description="Resume after this event id.")
    ] = None,
) -> StreamingResponse:
    """The caller's job events as they happen, resumable with `Last-Event-ID`."""
    types = frozenset(event_type or ())
    unknown = sorted(types - EVENT_TYPES.keys())
    if unknown:
        raise validation_error("type", f"unknown event types: {', '.join(unknown)}")
    if job is not None and not await _owns(context, user_id, job):
        raise not_found(f"job {job}")
    resume = resume_id(last_event_id_header if last_event_id_header is not None else last_event_id)
    feed = _feed(context, user_id, job, types, resume)
    return StreamingResponse(feed, media_type=MEDIA_TYPE, headers=HEADERS)


async def _owns(context: GatewayContext, user_id: UUID, job_id: UUID) -> bool:
    async with context.sessions() as session:
        owner = await session.scalar(
            select(col(JobRecord.user_id)).where(col(JobRecord.id) == job_id)
        )
    return owner == user_id


async def _feed(
    context: GatewayContext,
    user_id: UUID,
    job: UUID | None,
    types: frozenset[str],
    resume: int | None,
) -> AsyncIterator[bytes]:
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.NEW if resume is None else DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=None if resume is None else resume + 1,
    )
    if resume == 0:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    subscription = await context.nats.jetstream().subscribe(
        job_subjects(job) if job is not None else JOBS_SUBJECTS,
        stream=JOBS_STREAM,
        ordered_consumer=True,
        config=config,
        pending_msgs_limit=FEED_BUFFER_EVENTS,
    )
    # Ownership of the jobs seen so far on this feed, so each job costs one lookup.
    owned: dict[UUID, bool] = {job: True} if job is not None else {}
    heartbeat = context.settings.log_heartbeat_seconds
    try:
        yield retry_field(context.settings.log_retry_milliseconds) + HEARTBEAT
        while True:
            try:
                message = await subscription.next_msg(timeout=heartbeat)
            except TimeoutError:
                yield HEARTBEAT
                continue
            try:
                event = parse_event(message.data)
            except ValueError:
                continue  # not a job event this gateway can read (dead-lettered elsewhere)
            if types and event.type not in types:
                continue
            if event.job_id not in owned:
                owned[event.job_id] = await _owns(context, user_id, event.job_id)
            if not owned[event.job_id]:
                continue
            sequence = message.metadata.sequence.stream
            yield (f"id: {sequence}\nevent: {event.type}\ndata: ".encode() + message.data + b"\n\n")
    finally:
        await subscription.unsubscribe()
