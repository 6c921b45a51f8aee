"""The catalog of job events: a typed, versioned model per type, and how to decode and encode them.

Every event type's payload lives here. A breaking payload change bumps the
type's version (`version: Literal[n]` and `CURRENT_VERSION = n`), keeps a golden
fixture of the old version in `tests/fixtures/events/`, and registers an upcaster
in `ckrv.events.upcasting`; additive changes need none of that because payloads
ignore unknown fields.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AwareDatetime, Field, TypeAdapter, ValidationError

from ckrv.events.envelope import Event, EventData
from ckrv.events.errors import MalformedEvent
from ckrv.events.upcasting import UPCASTERS

SHA256_PATTERN = r"^[0-9a-f]{64}$"
WORKLOAD_NAME_PATTERN = r"^ckrv-job-[0-9a-f-]{36}-[1-9][0-9]*$"

TYPE_DESCRIPTION = "Event type; the subject token is the part after `job.`."
VERSION_DESCRIPTION = "Payload schema version of this type."


class Phase(StrEnum):
    """Where a job is in its run: the API's `phase`, finer than its `status`."""

    QUEUED = "queued"
    DISPATCHED = "dispatched"
    CLONING = "cloning"
    PLANNING = "planning"
    EXECUTING = "executing"
    VERIFYING = "verifying"
    UPLOADING = "uploading"


# The phases a workload reports from inside its pod; the first two are set by the service.
WorkloadPhase = Literal[
    Phase.CLONING, Phase.PLANNING, Phase.EXECUTING, Phase.VERIFYING, Phase.UPLOADING
]


class RunnerBackend(StrEnum):
    """Which runner backend holds a job's workload."""

    LOCAL = "local"
    KUBERNETES = "kubernetes"


def feature_branch_name(job_id: UUID) -> str:
    """The branch a job's result is committed to: `ckrv/<first 8 hex digits of the id>`."""
    return f"ckrv/{job_id.hex[:8]}"


def workload_name(job_id: UUID, attempt: int) -> str:
    """The workload running `attempt` of a job: unique per attempt, and a valid Kubernetes name."""
    return f"ckrv-job-{job_id}-{attempt}"


def _attempt_field(description: str = "Which attempt of the job this is about (1-based).") -> Any:
    return Field(ge=1, description=description)


class JobSubmittedData(EventData):
    """What the user asked for. Git credentials appear by name only, never as secrets."""

    user_id: str = Field(min_length=1, description="Id of the user who owns the job.")
    tier: str = Field(
        min_length=1,
        description="The owner's subscription tier at submission; admission and quotas read it.",
    )
    spec_id: str = Field(min_length=1, description="Identifier of the spec, from the spec file.")
    spec_content: str = Field(min_length=1, description="The full text of the spec file.")
    git_repo_url: str = Field(min_length=1, description="Repository to clone (https or ssh URL).")
    git_base_branch: str = Field(min_length=1, description="Branch the job's branch starts from.")
    git_credential_name: str | None = Field(
        default=None,
        description="The owner's stored git credential to clone with, by name; none if public.",
    )
    time_limit_seconds: int = Field(gt=0, description="Wall-clock limit of each attempt.")
    max_attempts: int = Field(
        ge=1, description="How many attempts the job may use when workloads are lost."
    )


class JobQueuedData(EventData):
    """The job was admitted and waits for a workload slot."""

    attempt: int = _attempt_field("The attempt that is queued: 1, or the number a retry assigned.")
    reason: str | None = Field(
        default=None, description="Why it was queued, e.g. `admitted` or `retry`."
    )
    position: int | None = Field(
        default=None, ge=1, description="Place in the queue when queued; 1 is next."
    )


class JobRejectedData(EventData):
    """Admission refused the job; it never runs."""

    error_code: str = Field(min_length=1, description="Machine-readable reason, e.g. `quota`.")
    error_message: str = Field(min_length=1, description="Reason for the user.")


class JobDispatchedData(EventData):
    """The dispatcher claimed the job for a workload (before creating it)."""

    attempt: int = _attempt_field()
    workload_name: str = Field(
        pattern=WORKLOAD_NAME_PATTERN,
        description="Name of the workload for this attempt: `ckrv-job-<job_id>-<attempt>`.",
    )
    runner: RunnerBackend = Field(description="Backend the workload runs on.")


class JobStartedData(EventData):
    """The workload of an attempt is running."""

    attempt: int = _attempt_field()
    workload_name: str = Field(
        pattern=WORKLOAD_NAME_PATTERN, description="Name of the workload that started."
    )


class JobPhaseChangedData(EventData):
    """The workload reported entering a new phase."""

    attempt: int = _attempt_field()
    phase: WorkloadPhase = Field(description="The phase the workload entered.")


class JobArtifactStoredData(EventData):
    """An output of an attempt is in object storage and verified."""

    attempt: int = _attempt_field()
    name: str = Field(
        min_length=1, description="Artifact name, e.g. `diff.patch`, `repo.bundle`, `logs.jsonl`."
    )
    key: str = Field(min_length=1, description="Object key: `jobs/<job_id>/<attempt>/<name>`.")
    size_bytes: int = Field(ge=0, description="Size of the stored object.")
    sha256: str = Field(pattern=SHA256_PATTERN, description="Hex SHA-256 of the stored object.")


class JobSucceededData(EventData):
    """The attempt's workload finished its work."""

    attempt: int = _attempt_field()
    summary: str = Field(description="What the agents did, from `result.json`.")
    files_changed: tuple[str, ...] = Field(
        default=(), description="Paths the job's commit changed, relative to the repository root."
    )
    metrics: dict[str, int | float] = Field(
        default_factory=dict,
        description="Numbers from `result.json`, e.g. duration, tokens, cost.",
    )


class JobFailedData(EventData):
    """The attempt's workload failed, or the job ran out of attempts."""

    attempt: int = _attempt_field()
    error_code: str = Field(
        min_length=1, description="Machine-readable reason, e.g. `verification_failed`."
    )
    error_message: str = Field(min_length=1, description="Reason for the user.")
    exit_code: int | None = Field(
        default=None, description="The worker's exit code, when the workload exited."
    )


class JobTimedOutData(EventData):
    """The attempt's workload ran past the job's time limit and was stopped."""

    attempt: int = _attempt_field()
    time_limit_seconds: int = Field(gt=0, description="The limit that was exceeded.")


class JobCancelRequestedData(EventData):
    """Someone asked to cancel the job."""

    reason: str | None = Field(default=None, description="Why, as given by the requester.")


class JobCancelledData(EventData):
    """The job was stopped at a cancel request; its workload, if any, is being deleted."""

    attempt: int | None = Field(
        default=None, ge=1, description="The attempt that was current; none if never queued."
    )


class JobLostData(EventData):
    """The attempt's workload vanished without an outcome (node lost, evicted, deleted)."""

    attempt: int = _attempt_field()
    reason: str = Field(min_length=1, description="What the watcher saw.")


class JobRetriedData(EventData):
    """A lost attempt will be run again as a new attempt."""

    attempt: int = Field(ge=2, description="The new attempt's number.")


class JobExpiredData(EventData):
    """The job's stored results were deleted at the end of their retention."""

    expired_at: AwareDatetime = Field(description="When the results expired.")
    keys: tuple[str, ...] = Field(default=(), description="Object keys that were deleted.")


class JobSubmitted(Event):
    """A user handed the service a job."""

    type: Literal["job.submitted"] = Field(default="job.submitted", description=TYPE_DESCRIPTION)
    version: Literal[1] = Field(default=1, description=VERSION_DESCRIPTION)
    data: JobSubmittedData = Field(description="What was submitted.")


class JobQueued(Event):
    """The job was admitted and waits for a workload slot."""

    type: Literal["job.queued"] = Field(default="job.queued", description=TYPE_DESCRIPTION)
    version: Literal[1] = Field(default=1, description=VERSION_DESCRIPTION)
    data: JobQueuedData = Field(description="Which attempt is queued.")


class JobRejected(Event):
    """Admission refused the job."""

    type: Literal["job.rejected"] = Field(default="job.rejected", description=TYPE_DESCRIPTION)
    version: Literal[1] = Field(default=1, description=VERSION_DESCRIPTION)
    data: JobRejectedData = Field(description="Why it was refused.")


class JobDispatched(Event):
    """The dispatcher claimed the job for a workload."""

    type: Literal["job.dispatched"] = Field(default="job.dispatched", description=TYPE_DESCRIPTION)
    version: Literal[1] = Field(default=1, description=VERSION_DESCRIPTION)
    data: JobDispatchedData = Field(description="Which workload runs which attempt.")


class JobStarted(Event):
    """The attempt's workload is running."""

    type: Literal["job.started"] = Field(default="job.started", description=TYPE_DESCRIPTION)
    version: Literal[1] = Field(default=1, description=VERSION_DESCRIPTION)
    data: JobStartedData = Field(description="Which workload started.")


class JobPhaseChanged(Event):
    """The workload entered a new phase."""

    type: Literal["job.phase-changed"] = Field(
        default="job.phase-changed", description=TYPE_DESCRIPTION
    )
    version: Literal[1] = Field(default=1, description=VERSION_DESCRIPTION)
    data: JobPhaseChangedData = Field(description="The new phase.")


class JobArtifactStored(Event):
    """An output of the job is stored and verified."""

    type: Literal["job.artifact-stored"] = Field(
        default="job.artifact-stored", description=TYPE_DESCRIPTION
    )
    version: Literal[1] = Field(default=1, description=VERSION_DESCRIPTION)
    data: JobArtifactStoredData = Field(description="Where the artifact is.")


class JobSucceeded(Event):
    """The job finished its work."""

    type: Literal["job.succeeded"] = Field(default="job.succeeded", description=TYPE_DESCRIPTION)
    version: Literal[1] = Field(default=1, description=VERSION_DESCRIPTION)
    data: JobSucceededData = Field(description="The result.")


class JobFailed(Event):
    """The job failed."""

    type: Literal["job.failed"] = Field(default="job.failed", description=TYPE_DESCRIPTION)
    version: Literal[1] = Field(default=1, description=VERSION_DESCRIPTION)
    data: JobFailedData = Field(description="Why it failed.")


class JobTimedOut(Event):
    """The job ran past its time limit."""

    type: Literal["job.timed-out"] = Field(default="job.timed-out", description=TYPE_DESCRIPTION)
    version: Literal[1] = Field(default=1, description=VERSION_DESCRIPTION)
    data: JobTimedOutData = Field(description="The limit it exceeded.")


class JobCancelRequested(Event):
    """Someone asked to cancel the job."""

    type: Literal["job.cancel-requested"] = Field(
        default="job.cancel-requested", description=TYPE_DESCRIPTION
    )
    version: Literal[1] = Field(default=1, description=VERSION_DESCRIPTION)
    data: JobCancelRequestedData = Field(description="Why.")


class JobCancelled(Event):
    """The job was cancelled."""

    type: Literal["job.cancelled"] = Field(default="job.cancelled", description=TYPE_DESCRIPTION)
    version: Literal[1] = Field(default=1, description=VERSION_DESCRIPTION)
    data: JobCancelledData = Field(description="The attempt that was current.")


class JobLost(Event):
    """The attempt's workload vanished without an outcome."""

    type: Literal["job.lost"] = Field(default="job.lost", description=TYPE_DESCRIPTION)
    version: Literal[1] = Field(default=1, description=VERSION_DESCRIPTION)
    data: JobLostData = Field(description="Which attempt was lost, and how.")


class JobRetried(Event):
    """A lost attempt will be run again."""

    type: Literal["job.retried"] = Field(default="job.retried", description=TYPE_DESCRIPTION)
    version: Literal[1] = Field(default=1, description=VERSION_DESCRIPTION)
    data: JobRetriedData = Field(description="The new attempt.")


class JobExpired(Event):
    """The job's stored results were deleted."""

    type: Literal["job.expired"] = Field(default="job.expired", description=TYPE_DESCRIPTION)
    version: Literal[1] = Field(default=1, description=VERSION_DESCRIPTION)
    data: JobExpiredData = Field(description="When, and what was deleted.")


JobEvent = Annotated[
    JobSubmitted
    | JobQueued
    | JobRejected
    | JobDispatched
    | JobStarted
    | JobPhaseChanged
    | JobArtifactStored
    | JobSucceeded
    | JobFailed
    | JobTimedOut
    | JobCancelRequested
    | JobCancelled
    | JobLost
    | JobRetried
    | JobExpired,
    Field(discriminator="type"),
]

JOB_EVENT_ADAPTER: TypeAdapter[JobEvent] = TypeAdapter(JobEvent)

EVENT_CLASSES: tuple[type[Event], ...] = (
    JobSubmitted,
    JobQueued,
    JobRejected,
    JobDispatched,
    JobStarted,
    JobPhaseChanged,
    JobArtifactStored,
    JobSucceeded,
    JobFailed,
    JobTimedOut,
    JobCancelRequested,
    JobCancelled,
    JobLost,
    JobRetried,
    JobExpired,
)

EVENT_TYPES: dict[str, type[Event]] = {
    event_class.model_fields["type"].default: event_class for event_class in EVENT_CLASSES
}

CURRENT_VERSIONS: dict[str, int] = {
    event_type: event_class.CURRENT_VERSION for event_type, event_class in EVENT_TYPES.items()
}


def parse_event(raw: bytes | str | dict[str, Any]) -> JobEvent:
    """Decode a JOBS message (or its already-parsed JSON) into its catalog event.

    Older versions are lifted by the upcasters in `UPCASTERS` first. Every failure is an
    `EventDecodeError`: `MalformedEvent`, `UnknownEventType` or `UnknownEventVersion`.
    """
    document: object
    if isinstance(raw, dict):
        document = raw
    else:
        try:
            document = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise MalformedEvent(f"event is not valid JSON: {error}") from error
    if not isinstance(document, dict):
        raise MalformedEvent(f"event must be a JSON object, not {type(document).__name__}")

    current = UPCASTERS.upcast(document, CURRENT_VERSIONS)
    try:
        return JOB_EVENT_ADAPTER.validate_python(current)
    except ValidationError as error:
        raise MalformedEvent(
            f"{current['type']} version {current.get('version', 1)} does not match its schema: "
            f"{error}"
        ) from error


def encode_event(event: Event) -> bytes:
    """The compact JSON of an event, as published on the JOBS stream."""
    return event.model_dump_json().encode()
