"""Turns `jobs` rows into the API's `Job`, with elapsed time and a completion estimate."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from uuid import UUID

from sqlalchemy import Select, bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from ckrv.schemas.api import TERMINAL_JOB_STATUSES, JobPublic, JobStatus
from ckrv.services.gateway.tables import JobRecord

# How many of the owner's latest successful runs on a repository the estimate averages.
ESTIMATE_SAMPLE = 5


def _typical_duration() -> Select[timedelta | None]:
    recent = (
        select((col(JobRecord.completed_at) - col(JobRecord.started_at)).label("took"))
        .where(
            col(JobRecord.user_id) == bindparam("user_id"),
            col(JobRecord.git_repo_url) == bindparam("repository"),
            col(JobRecord.status) == JobStatus.SUCCEEDED.value,
            col(JobRecord.started_at).is_not(None),
            col(JobRecord.completed_at).is_not(None),
        )
        .order_by(col(JobRecord.completed_at).desc())
        .limit(ESTIMATE_SAMPLE)
        .subquery()
    )
    return select(func.avg(recent.c.took))


# Mean run time of user `user_id`'s recent successful jobs on `repository` (NULL if none);
# built once, as building a statement costs more than running it.
TYPICAL_DURATION = _typical_duration()


async def typical_durations(
    session: AsyncSession, user_id: UUID, repositories: Iterable[str]
) -> dict[str, timedelta]:
    """Mean run time of the owner's recent successful jobs, per repository."""
    durations: dict[str, timedelta] = {}
    for repository in set(repositories):
        mean = await session.scalar(
            TYPICAL_DURATION, {"user_id": user_id, "repository": repository}
        )
        if mean is not None:
            durations[repository] = mean
    return durations


def present(
    record: JobRecord, typical: dict[str, timedelta], now: datetime | None = None
) -> JobPublic:
    now = now or datetime.now(UTC)
    status = JobStatus(record.status)
    elapsed = None
    if record.started_at is not None:
        end = record.completed_at or now
        elapsed = max(0.0, (end - record.started_at).total_seconds())
    estimate = None
    if status not in TERMINAL_JOB_STATUSES and record.git_repo_url in typical:
        estimate = (record.started_at or now) + typical[record.git_repo_url]
    return JobPublic(
        id=record.id,
        status=status,
        phase=record.phase,
        attempt=record.attempt,
        spec_id=record.spec_id,
        git_repo_url=record.git_repo_url,
        git_base_branch=record.git_base_branch,
        git_credential_name=record.git_credential_name,
        feature_branch_name=record.feature_branch_name,
        created_at=record.created_at,
        started_at=record.started_at,
        completed_at=record.completed_at,
        result_status=JobStatus(record.result_status) if record.result_status else None,
        result_summary=record.result_summary,
        error_message=record.error_message,
        metrics=record.metrics,
        elapsed_seconds=elapsed,
        estimated_completion_at=estimate,
        cancel_requested=record.cancel_requested,
    )


async def present_all(
    session: AsyncSession, user_id: UUID, records: Sequence[JobRecord]
) -> list[JobPublic]:
    unfinished = [r for r in records if JobStatus(r.status) not in TERMINAL_JOB_STATUSES]
    typical = await typical_durations(session, user_id, (r.git_repo_url for r in unfinished))
    now = datetime.now(UTC)
    return [present(record, typical, now) for record in records]
