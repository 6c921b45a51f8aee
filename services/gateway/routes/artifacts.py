"""`/v1/jobs/{id}/artifacts`: a job's stored results, its diff as text, each result for download.

What a job has stored is read from its events: the read model's row, with the
events the stream holds after it folded in. The row trails the stream by a few
milliseconds, and a result must be downloadable the moment its job's end is on
the stream. Results expire the tier's retention after the job's end; from then
on (or from the `job.expired` of the janitor, which deletes them) they answer
410 Gone with the expiry time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Path, status
from fastapi.responses import RedirectResponse, StreamingResponse
from sqlalchemy.ext.asyncio import AsyncSession

from ckrv.events.catalog import JobArtifactStoredData
from ckrv.events.state import ApiStatus, JobState, api_status, evolve
from ckrv.schemas.api import ArtifactPublic, ArtifactsPublic, SubscriptionTier
from ckrv.services.common.tiers import TIERS
from ckrv.services.gateway.artifact_store import ArtifactMissing, ArtifactStore, OpenedArtifact
from ckrv.services.gateway.auth import CurrentUser
from ckrv.services.gateway.context import ContextDep, GatewayContext, SessionDep
from ckrv.services.gateway.errors import ApiError, not_found
from ckrv.services.gateway.routes.jobs import ERRORS, owned_job
from ckrv.services.gateway.tables import User

router = APIRouter(prefix="/jobs", tags=["Artifacts"])

DIFF_NAME = "diff.patch"
ARTIFACT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
# How an unsuccessful end reads after "job <id>".
_UNSUCCESSFUL = {
    ApiStatus.FAILED: "failed",
    ApiStatus.TIMEOUT: "timed out",
    ApiStatus.CANCELLED: "was cancelled",
}

ARTIFACT_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    404: {"description": "No such job for this user, or no such result of it (`not_found`)."},
    409: {
        "description": "The job has not finished (`job_not_finished`), or ended without a "
        "successful output (`no_successful_output`, with `error_message`); `status` is the "
        "job's status."
    },
    410: {
        "description": "The results were deleted at the end of their retention (`gone`); "
        "`expired_at` says when."
    },
}


@dataclass(frozen=True)
class JobResults:
    """What a job has stored, as of its latest event."""

    state: JobState
    expires_at: datetime | None

    @property
    def artifacts(self) -> list[JobArtifactStoredData]:
        """The final attempt's, by name: an earlier attempt was lost, and its outputs with it."""
        return sorted(
            (
                artifact
                for artifact in self.state.artifacts
                if artifact.attempt == self.state.attempt
            ),
            key=lambda artifact: artifact.name,
        )

    def artifact(self, name: str) -> JobArtifactStoredData:
        """The stored artifact `name`, or the error that says why there is none."""
        for artifact in self.artifacts:
            if artifact.name == name:
                return artifact
        job = f"job {self.state.job_id}"
        job_status = api_status(self.state)
        if not self.state.is_terminal:
            raise ApiError(
                409,
                "job_not_finished",
                f"{job} is {job_status}: its results are there once it succeeds",
                status=job_status.value,
            )
        if job_status is not ApiStatus.SUCCEEDED:
            error = self.state.error_message
            raise ApiError(
                409,
                "no_successful_output",
                f"{job} {_UNSUCCESSFUL[job_status]}{f': {error}' if error else ''}; "
                "it has no successful output",
                status=job_status.value,
                error_message=error,
            )
        raise not_found(f"{name} of {job}")


def results_expire_at(state: JobState) -> datetime | None:
    """When a job's results are deleted: its end plus its tier's retention; None until it ends."""
    if state.completed_at is None or state.tier is None:
        return None
    retention = TIERS[SubscriptionTier(state.tier)].result_retention_days
    return state.completed_at + timedelta(days=retention)


async def job_results(
    context: GatewayContext, session: AsyncSession, user: User, job_id: UUID
) -> JobResults:
    """The job's results if `user` owns it and they have not expired (else 404 or 410)."""
    record = await owned_job(session, user, job_id)
    # The connection goes back before the stream is read.
    await session.close()
    state = JobState.model_validate(record.state)
    for stored in await context.store.read(job_id, after_sequence=record.last_sequence):
        state = evolve(state, stored.event)
    results = JobResults(state, results_expire_at(state))
    expired_at = state.expired_at
    if expired_at is None and results.expires_at and results.expires_at <= datetime.now(UTC):
        # Past the retention the bucket's lifecycle rule may delete them before the janitor.
        expired_at = results.expires_at
    if expired_at is not None:
        raise ApiError(
            410,
            "gone",
            f"the results of job {job_id} expired at {expired_at.isoformat()}",
            expired_at=expired_at.isoformat(),
        )
    return results


@router.get("/{job_id}/artifacts", response_model=ArtifactsPublic, responses=ARTIFACT_ERRORS)
async def list_artifacts(
    job_id: UUID, user: CurrentUser, session: SessionDep, context: ContextDep
) -> ArtifactsPublic:
    """The job's stored results (of its final attempt), with sizes, digests and expiry."""
    results = await job_results(context, session, user, job_id)
    return ArtifactsPublic(
        artifacts=[
            ArtifactPublic(
                name=artifact.name,
                size=artifact.size_bytes,
                sha256=artifact.sha256,
                expires_at=results.expires_at,
            )
            for artifact in results.artifacts
        ]
    )


@router.get(
    "/{job_id}/artifacts/diff",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The job's changes as a diff `git apply` takes, binary files included.",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        **ARTIFACT_ERRORS,
    },
)
async def job_diff(
    job_id: UUID, user: CurrentUser, session: SessionDep, context: ContextDep
) -> StreamingResponse:
    """The job's diff (`diff.patch`), streamed from storage."""
    artifact = (await job_results(context, session, user, job_id)).artifact(DIFF_NAME)
    opened = await _open(context, job_id, artifact)
    headers = {"Content-Length": str(opened.size)} if opened.size is not None else None
    return StreamingResponse(opened.chunks, media_type="text/plain", headers=headers)


@router.get(
    "/{job_id}/artifacts/{name}",
    status_code=status.HTTP_302_FOUND,
    response_class=RedirectResponse,
    responses={
        302: {"description": "`Location` is a short-lived URL that downloads the result."},
        422: {"description": "Not an artifact name (`validation_error`)."},
        **ARTIFACT_ERRORS,
    },
)
async def download_artifact(
    job_id: UUID,
    name: Annotated[
        str,
        Path(
            pattern=ARTIFACT_NAME_PATTERN,
            description="`diff.patch`, `repo.bundle`, `result.json` or `logs.jsonl`.",
        ),
    ],
    user: CurrentUser,
    session: SessionDep,
    context: ContextDep,
) -> RedirectResponse:
    """A redirect to a short-lived download URL of one of the job's results."""
    artifact = (await job_results(context, session, user, job_id)).artifact(name)
    valid_for = timedelta(seconds=context.settings.artifact_url_seconds)
    url = _store(context).download_url(artifact.key, valid_for)
    return RedirectResponse(
        url, status_code=status.HTTP_302_FOUND, headers={"Cache-Control": "no-store"}
    )


def _store(context: GatewayContext) -> ArtifactStore:
    if context.artifacts is None:
        raise ApiError(503, "unavailable", "results cannot be read now; try again soon")
    return context.artifacts


async def _open(
    context: GatewayContext, job_id: UUID, artifact: JobArtifactStoredData
) -> OpenedArtifact:
    try:
        return await _store(context).open(artifact.key)
    except ArtifactMissing as error:
        raise ApiError(
            500,
            "artifact_missing",
            f"{artifact.name} of job {job_id} is recorded but not in storage; please report this",
        ) from error
