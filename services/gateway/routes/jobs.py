"""`/v1/jobs`: submit, list, inspect and cancel jobs, and read a job's event history."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Header, Query, Response, status
from sqlalchemy import or_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from ckrv.events.state import JobTransitionError, RequestCancel, decide
from ckrv.schemas.api import (
    TERMINAL_JOB_STATUSES,
    JobCreate,
    JobEventPublic,
    JobEventsPublic,
    JobPublic,
    JobsPublic,
    JobStatus,
)
from ckrv.services.gateway.auth import CallerId, CurrentUser
from ckrv.services.gateway.context import ContextDep, GatewayContext, SessionDep
from ckrv.services.gateway.errors import ApiError, not_found, validation_error
from ckrv.services.gateway.presenter import present_all
from ckrv.services.gateway.projection import project_job
from ckrv.services.gateway.submission import publish_outbox_event, submit_job
from ckrv.services.gateway.tables import JobRecord, OutboxEvent, User

router = APIRouter(prefix="/jobs", tags=["Jobs"])

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or invalid token (`unauthorized`)."},
    404: {"description": "No such job for this user (`not_found`)."},
    422: {"description": "Invalid input (`validation_error`), with `details` per field."},
}


async def owned_job(session: AsyncSession, user: User, job_id: UUID) -> JobRecord:
    """The job if `user` owns it; anyone else's job is as absent as a missing one."""
    record = await session.get(JobRecord, job_id)
    if record is None or record.user_id != user.id:
        raise not_found(f"job {job_id}")
    return record


async def presented(session: AsyncSession, user: User, record: JobRecord) -> JobPublic:
    (job,) = await present_all(session, user.id, [record])
    return job


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=JobPublic,
    responses={
        **ERRORS,
        200: {"description": "Replay of an earlier request with the same Idempotency-Key."},
        402: {"description": "Monthly quota used up (`quota_exceeded`)."},
        409: {"description": "Idempotency-Key reused for another request."},
        429: {"description": "Too many unfinished jobs (`concurrency_limited`)."},
    },
)
async def create_job(
    body: JobCreate,
    *,
    user_id: CallerId,
    context: ContextDep,
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(description="Makes retries safe: the same key and body give the same job."),
    ] = None,
) -> JobPublic:
    """Submit a job; it is accepted at once and runs in the background."""
    submission = await submit_job(context, user_id, body, idempotency_key)
    if not submission.created:
        response.status_code = status.HTTP_200_OK
    response.headers["Location"] = f"/v1/jobs/{submission.job.id}"
    return submission.job


def _encode_cursor(record: JobRecord) -> str:
    position = {"created_at": record.created_at.isoformat(), "id": str(record.id)}
    return base64.urlsafe_b64encode(json.dumps(position).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        position = json.loads(base64.urlsafe_b64decode(padded.encode()))
        return datetime.fromisoformat(position["created_at"]), UUID(position["id"])
    # AttributeError: an `id` that is not a string (UUID() calls str methods on it).
    except (binascii.Error, ValueError, KeyError, TypeError, AttributeError) as error:
        raise validation_error("cursor", "is not a cursor this API returned") from error


@router.get("", response_model=JobsPublic, responses=ERRORS)
async def list_jobs(
    user: CurrentUser,
    session: SessionDep,
    job_status: Annotated[JobStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> JobsPublic:
    """The user's jobs, newest first, a page at a time."""
    query = select(JobRecord).where(col(JobRecord.user_id) == user.id)
    if job_status is not None:
        query = query.where(col(JobRecord.status) == job_status.value)
    if cursor is not None:
        created_at, job_id = _decode_cursor(cursor)
        query = query.where(
            or_(
                col(JobRecord.created_at) < created_at,
                tuple_(col(JobRecord.created_at), col(JobRecord.id)) < tuple_(created_at, job_id),
            )
        )
    query = query.order_by(col(JobRecord.created_at).desc(), col(JobRecord.id).desc())
    records = list((await session.scalars(query.limit(limit + 1))).all())
    page = records[:limit]
    return JobsPublic(
        jobs=await present_all(session, user.id, page),
        next_cursor=_encode_cursor(page[-1]) if len(records) > limit else None,
    )


@router.get("/{job_id}", response_model=JobPublic, responses=ERRORS)
async def get_job(job_id: UUID, user: CurrentUser, session: SessionDep) -> JobPublic:
    """One job with its status, phase, timing and outcome."""
    return await presented(session, user, await owned_job(session, user, job_id))


@router.post(
    "/{job_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobPublic,
    responses={**ERRORS, 409: {"description": "The job already ended (`conflict`)."}},
)
async def cancel_job(
    job_id: UUID, user: CurrentUser, context: ContextDep, session: SessionDep
) -> JobPublic:
    """Ask for the job to be stopped; it ends as `cancelled` once its workload is gone."""
    record = await owned_job(session, user, job_id)
    # The connection goes back before waiting on JetStream and other sessions.
    await session.close()
    if JobStatus(record.status) in TERMINAL_JOB_STATUSES:
        raise _already_ended(job_id, record.status)
    await _confirm_submission(context, job_id)
    command = RequestCancel(actor=f"user:{user.id}", reason="requested by the owner")
    try:
        appended = await context.store.execute(job_id, lambda state: decide(state, command))
    except JobTransitionError as error:
        raise ApiError(409, "conflict", str(error), status=str(error.status)) from error
    async with session.begin():
        # Read-your-writes: the row shows the request before the projector gets to it.
        last = appended[-1].sequence if appended else record.last_sequence
        await project_job(session, context.nats, job_id, last)
    return await presented(session, user, await owned_job(session, user, job_id))


def _already_ended(job_id: UUID, job_status: str) -> ApiError:
    return ApiError(409, "conflict", f"job {job_id} already ended: {job_status}", status=job_status)


async def _confirm_submission(context: GatewayContext, job_id: UUID) -> None:
    """A cancel must follow the job's first event; publish it now if still in the outbox."""
    async with context.sessions() as session:
        pending = (
            await session.scalars(
                select(OutboxEvent).where(
                    col(OutboxEvent.job_id) == job_id, col(OutboxEvent.published_at).is_(None)
                )
            )
        ).all()
    for outbox in pending:
        if not await publish_outbox_event(context, outbox):
            raise ApiError(503, "unavailable", "the event stream is unreachable; try again soon")


@router.get("/{job_id}/events", response_model=JobEventsPublic, responses=ERRORS)
async def job_events(
    job_id: UUID, user: CurrentUser, context: ContextDep, session: SessionDep
) -> JobEventsPublic:
    """The job's audit trail: every event, oldest first."""
    await owned_job(session, user, job_id)
    await session.close()
    history = await context.store.read(job_id)
    return JobEventsPublic(
        events=[
            JobEventPublic(
                sequence=stored.sequence,
                id=stored.event.id,
                type=stored.event.type,
                version=stored.event.version,
                occurred_at=stored.event.occurred_at,
                actor=stored.event.actor,
                data=_public_payload(stored.event.data.model_dump(mode="json")),
            )
            for stored in history
        ]
    )


def _public_payload(data: dict[str, object]) -> dict[str, object]:
    # The spec is the user's own, but it can be large; the audit trail names it by id.
    return {name: value for name, value in data.items() if name != "spec_content"}
