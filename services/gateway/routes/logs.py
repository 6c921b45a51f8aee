"""`/v1/jobs/{id}/logs`: a job's log as JSON pages or as a live event stream, and stream tickets.

Paging: `after` and `next` are line numbers (`LogEntry.seq`), the same whether
the lines come from the LOGS stream or, after its retention, from the archive.
Streaming: `Last-Event-ID` is a stream sequence, the `id` of the last event
received (see `log_stream`). Callers show a bearer token, or on the log URL only
a stream ticket (`?ticket=`, for a browser's `EventSource`) or the web sign-in
cookie. Another user's job is not found, whichever the proof.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Header, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from ckrv.events.state import ApiStatus, JobState
from ckrv.schemas.api import TERMINAL_JOB_STATUSES, JobStatus
from ckrv.schemas.logs import LogEntry
from ckrv.services.gateway.auth import CurrentUser, caller_id
from ckrv.services.gateway.context import ContextDep, GatewayContext, SessionDep
from ckrv.services.gateway.errors import ApiError, not_found, validation_error
from ckrv.services.gateway.identity.browser_session import SessionCookies
from ckrv.services.gateway.live_logs import LiveLogs
from ckrv.services.gateway.log_history import LogLines, StoredLine, log_archives
from ckrv.services.gateway.log_stream import (
    HEADERS,
    MEDIA_TYPE,
    StreamTiming,
    archived_stream,
    live_stream,
    resume_id,
)
from ckrv.services.gateway.log_tickets import LogTickets, ticket_accepted
from ckrv.services.gateway.routes.jobs import ERRORS, owned_job
from ckrv.services.gateway.tables import JobRecord, User

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/jobs", tags=["Logs"])
# The open-source `ckrv` client asks for logs below its API URL, which ends in /v1 already.
doubled_prefix_router = APIRouter(prefix="/v1/jobs", include_in_schema=False)

MAX_PAGE_LINES = 1000
DEFAULT_PAGE_LINES = 500
MAX_TAIL_LINES = 100_000


class LogLinePublic(LogEntry):
    id: int | None = Field(
        description="The line's sequence on the LOGS stream, which is its event id when "
        "streamed; null for a line served from the archive."
    )


class JobLogsPublic(BaseModel):
    logs: list[LogLinePublic] = Field(description="Lines in the order they were written.")
    next: int | None = Field(
        description="Pass as `after` for the lines that follow (while the job runs there may "
        "be none yet); null once the job has ended and no line is left."
    )


class LogTicketPublic(BaseModel):
    ticket: str = Field(description="Proof for `?ticket=` on this job's log URL, and no other.")
    url: str = Field(description="The job's log URL with the ticket, for an `EventSource`.")
    valid_seconds: int = Field(
        description="Valid this long, and beyond that while the job runs and for this long "
        "after it ended (at most a day)."
    )


LOG_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    401: {"description": "No valid token, ticket or sign-in (`unauthorized`)."},
    410: {"description": "The job's logs were deleted at the end of retention (`expired`)."},
}
STREAM_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The lines as JSON, or as Server-Sent Events with `follow=true` or "
        "`Accept: text/event-stream`: events with `id:` and a `LogEntry` as `data:`, "
        "`event: reset` when `Last-Event-ID` is no longer kept (the log starts over), "
        "`event: end` with the job's status, then `data: [DONE]`.",
        "content": {MEDIA_TYPE: {"schema": {"type": "string"}}},
    }
}


@router.get(
    "/{job_id}/logs", response_model=JobLogsPublic, responses={**STREAM_RESPONSE, **LOG_ERRORS}
)
async def job_logs(
    job_id: UUID,
    request: Request,
    *,
    context: ContextDep,
    tail: Annotated[
        int | None, Query(ge=1, le=MAX_TAIL_LINES, description="Start at the last N lines.")
    ] = None,
    after: Annotated[
        int | None, Query(ge=0, description="Start after the line with this `seq`.")
    ] = None,
    limit: Annotated[
        int, Query(ge=1, le=MAX_PAGE_LINES, description="Lines per page (JSON).")
    ] = DEFAULT_PAGE_LINES,
    follow: Annotated[bool, Query(description="Stream the lines as Server-Sent Events.")] = False,
    last_event_id: Annotated[
        str | None,
        Query(max_length=20, description="Resume a stream after this event id."),
    ] = None,
    ticket: Annotated[
        str | None,
        Query(max_length=500, description="A stream ticket, for clients that cannot send tokens."),
    ] = None,
    last_event_id_header: Annotated[
        str | None,
        Header(alias="Last-Event-ID", description="Resume a stream after this event id."),
    ] = None,
) -> JobLogsPublic | Response:
    """The job's log: a page of lines, or every line as it comes until the job ends."""
    if tail is not None and after is not None:
        raise validation_error("tail", "give either tail or after, not both")
    record = await _readable_job(request, context, job_id, ticket)
    start = LogStart(tail, after or 0)
    if follow or MEDIA_TYPE in request.headers.get("accept", ""):
        resume = last_event_id_header if last_event_id_header is not None else last_event_id
        return await _event_stream(context, record, start, resume_id(resume))
    return await _page(context, record, start, limit)


doubled_prefix_router.add_api_route(
    "/{job_id}/logs", job_logs, methods=["GET"], response_model=JobLogsPublic
)


@router.post(
    "/{job_id}/logs/ticket",
    status_code=status.HTTP_201_CREATED,
    response_model=LogTicketPublic,
    responses=ERRORS,
)
async def create_log_ticket(
    job_id: UUID, user: CurrentUser, session: SessionDep, context: ContextDep
) -> LogTicketPublic:
    """A ticket that lets a browser's `EventSource` stream this job's log without a token."""
    await owned_job(session, user, job_id)
    ticket = _tickets(context).issue(user.id, job_id)
    return LogTicketPublic(
        ticket=ticket,
        url=f"/v1/jobs/{job_id}/logs?ticket={ticket}",
        valid_seconds=context.settings.log_ticket_seconds,
    )


def _tickets(context: GatewayContext) -> LogTickets:
    return LogTickets(context.settings.session_secret.get_secret_value())


def _unauthorized() -> ApiError:
    return ApiError(
        401,
        "unauthorized",
        "send `Authorization: Bearer <token>`, or a ticket from POST /v1/jobs/{id}/logs/ticket "
        "as `?ticket=`",
    )


async def _readable_job(
    request: Request, context: GatewayContext, job_id: UUID, ticket: str | None
) -> JobRecord:
    """The job, if the caller proves to be its owner; 401 without proof, 404 for anyone else."""
    settings = context.settings
    proof = None
    if "authorization" in request.headers:
        user_id = await caller_id(request, context)
    elif ticket is not None:
        proof = _tickets(context).read(ticket)
        if proof is None or proof.job_id != job_id:
            raise _invalid_ticket()
        user_id = proof.user_id
    else:
        cookies = SessionCookies(
            secret=settings.session_secret.get_secret_value(),
            max_age_seconds=settings.session_max_age_seconds,
            secure=settings.base_url.startswith("https://"),
        )
        session = cookies.read(request)
        if session is None or session.user_id is None:
            raise _unauthorized()
        user_id = session.user_id
    async with context.sessions() as db:
        record = await db.get(JobRecord, job_id)
        owner = await db.get(User, user_id)
    if owner is None:
        raise _unauthorized()
    if record is None or record.user_id != user_id:
        raise not_found(f"job {job_id}")
    if proof is not None and not ticket_accepted(
        proof,
        _ended_at(record),
        datetime.now(UTC),
        validity=timedelta(seconds=settings.log_ticket_seconds),
        max_age=timedelta(seconds=settings.log_ticket_max_age_seconds),
    ):
        raise _invalid_ticket()
    return record


def _invalid_ticket() -> ApiError:
    return ApiError(
        401,
        "unauthorized",
        "the ticket is not valid for this job or has expired; ask for a new one with "
        "POST /v1/jobs/{id}/logs/ticket",
    )


def _ended_at(record: JobRecord) -> datetime | None:
    if JobStatus(record.status) not in TERMINAL_JOB_STATUSES:
        return None
    return record.completed_at or record.created_at


def _live(context: GatewayContext) -> LiveLogs:
    if context.live_logs is None or context.live_logs.closed:
        raise ApiError(503, "unavailable", "log streams are not served now; try again soon")
    return context.live_logs


@dataclass(frozen=True)
class LogStart:
    """Where the caller wants the log to start: at the last `tail` lines, or after line `after`."""

    tail: int | None
    after: int

    async def after_seq(
        self, lines: LogLines, job_id: UUID, archived: list[StoredLine] | None
    ) -> int:
        """The `seq` of the line before the first one wanted; 0 for the whole log."""
        if self.tail is None:
            return self.after
        if archived is not None:
            last_seq = archived[-1].seq if archived else 0
        else:
            last = await lines.last(job_id)
            last_seq = last.seq if last is not None else 0
        return max(last_seq - self.tail, 0)


async def _page(
    context: GatewayContext, record: JobRecord, start: LogStart, limit: int
) -> JobLogsPublic:
    lines = LogLines(context.nats)
    archived = await _archived(context, record, lines)
    after_seq = await start.after_seq(lines, record.id, archived)
    if archived is not None:
        rest = [line for line in archived if line.seq > after_seq]
        page, more = rest[:limit], len(rest) > limit
    else:
        position = await lines.position_after(record.id, after_seq)
        batch = await lines.read(record.id, position, limit)
        page, more = batch.lines, batch.more
    ended_at = _ended_at(record)
    # Lines still reach LOGS for a moment after the job's end (see log_end_quiet_seconds).
    settled = ended_at is not None and datetime.now(UTC) - ended_at >= timedelta(
        seconds=context.settings.log_end_quiet_seconds
    )
    return JobLogsPublic(
        logs=_public_lines(page),
        next=None if settled and not more else (page[-1].seq if page else after_seq),
    )


def _public_lines(lines: list[StoredLine]) -> list[LogLinePublic]:
    public = []
    for line in lines:
        try:
            public.append(
                LogLinePublic.model_validate({**json.loads(line.data), "id": line.sequence})
            )
        except (ValueError, TypeError):
            # ValidationError is a ValueError; a line that is not an object is a TypeError.
            logger.warning("skipped a line that is not a log entry", extra={"id": line.sequence})
    return public


async def _event_stream(
    context: GatewayContext, record: JobRecord, start: LogStart, resume: int | None
) -> StreamingResponse:
    settings = context.settings
    timing = StreamTiming(
        heartbeat_seconds=settings.log_heartbeat_seconds,
        retry_milliseconds=settings.log_retry_milliseconds,
        end_quiet_seconds=settings.log_end_quiet_seconds,
    )
    lines = LogLines(context.nats)
    live = _live(context)
    reset = False
    if resume:
        if await lines.holds(record.id, resume):
            events = live_stream(
                record.id, resume + 1, lines=lines, live=live, timing=timing, reset=False
            )
            return StreamingResponse(events, media_type=MEDIA_TYPE, headers=HEADERS)
        # Aged out (or never ours): the whole log again, announced as such.
        reset, start = True, LogStart(tail=None, after=0)
    archived = await _archived(context, record, lines)
    after_seq = await start.after_seq(lines, record.id, archived)
    if archived is not None:
        events = archived_stream(
            [line for line in archived if line.seq > after_seq],
            ApiStatus(record.status),
            timing,
            reset=reset,
        )
    else:
        position = await lines.position_after(record.id, after_seq)
        events = live_stream(
            record.id, position, lines=lines, live=live, timing=timing, reset=reset
        )
    return StreamingResponse(events, media_type=MEDIA_TYPE, headers=HEADERS)


async def _archived(
    context: GatewayContext, record: JobRecord, lines: LogLines
) -> list[StoredLine] | None:
    """An ended job's archived lines once LOGS no longer holds its log from the first line;
    None while LOGS is the place to read it."""
    state = JobState.model_validate(record.state)
    archives = log_archives(state.artifacts)
    if not archives or _ended_at(record) is None:
        return None
    first = await lines.first(record.id)
    if first is not None and first.seq <= 1:
        return None
    if state.expired_at is not None:
        raise ApiError(410, "expired", f"the logs of job {record.id} were deleted on expiry")
    if context.log_archive is None:
        raise ApiError(503, "unavailable", "the log archive cannot be read now; try again soon")
    return await context.log_archive.read(archives)
