"""The pure job state machine: `evolve` folds events into state; `decide` turns commands to events.

Lifecycle (ARCHITECTURE.md, "Events"):

    new → submitted → queued → dispatched → running → succeeded | failed | timed_out
              └→ failed (rejected)   dispatched/running → lost → retrying → queued
    any non-terminal state + cancel requested → cancelled

Rules the diagram leaves open, decided here:

- `evolve` accepts facts. An event that does not fit the current state (a late
  or stale event, an event for an attempt that is no longer current, a repeat)
  is counted in `ignored_event_count` and changes nothing else; an event whose
  id was already folded changes nothing at all.
- Terminal states are final, and the first terminal event wins. In particular a
  job whose cancel is requested still ends as succeeded, failed or timed out if
  that outcome arrives first: the dispatcher confirms the cancel *before* it
  deletes the workload, so the failure the deletion causes arrives late and is
  ignored, while an outcome that beat the confirmation is real and is kept.
- Cancel-requested is a flag over the status rather than a status, because the
  status beneath it still matters: whether a workload exists to delete, and
  which outcomes may still arrive.
- After a terminal state only two events change anything, and neither changes
  the status: `artifact-stored` for the final attempt (the log archive is
  stored when a job ends) until the results expire, and the first `expired`.
- An attempt's outcome (succeeded, failed, timed-out) is accepted while its
  workload is dispatched, running or lost: a lost workload's late outcome is
  its final word. Progress (started, phase-changed) of a lost attempt is not.
- Lost workloads are retried up to `max_attempts` attempts in all. When the
  lost attempt is the last one, `decide` yields `failed` (`error_code`
  `workload_lost`) instead of `lost` (MarkLost) or `retried` (RetryJob), and
  `evolve` ignores a retry past the limit.
- `decide` returns `[]` when the command's goal already holds, and raises
  `JobTransitionError` when it cannot be reached from the current state.
  Commands are not blocked by a pending cancel, except queueing, dispatching
  and retrying, which would start work the user asked to stop.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from enum import StrEnum
from typing import Any, Literal, assert_never
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from ckrv.events.catalog import (
    JobArtifactStored,
    JobArtifactStoredData,
    JobCancelled,
    JobCancelledData,
    JobCancelRequested,
    JobCancelRequestedData,
    JobDispatched,
    JobDispatchedData,
    JobEvent,
    JobExpired,
    JobExpiredData,
    JobFailed,
    JobFailedData,
    JobLost,
    JobLostData,
    JobPhaseChanged,
    JobPhaseChangedData,
    JobQueued,
    JobQueuedData,
    JobRejected,
    JobRejectedData,
    JobRetried,
    JobRetriedData,
    JobStarted,
    JobStartedData,
    JobSubmitted,
    JobSubmittedData,
    JobSucceeded,
    JobSucceededData,
    JobTimedOut,
    JobTimedOutData,
    Phase,
    RunnerBackend,
    WorkloadPhase,
    workload_name,
)
from ckrv.events.envelope import ACTOR_PATTERN, new_event_id, utc_now

WORKLOAD_LOST = "workload_lost"
TIME_LIMIT_EXCEEDED = "time_limit_exceeded"


class JobStatus(StrEnum):
    """Where a job is in its lifecycle, as the state machine tracks it."""

    NEW = "new"
    SUBMITTED = "submitted"
    QUEUED = "queued"
    DISPATCHED = "dispatched"
    RUNNING = "running"
    LOST = "lost"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.TIMED_OUT, JobStatus.CANCELLED}
)
# Statuses in which the current attempt's workload may still report an outcome.
OUTCOME_PENDING_STATUSES = frozenset({JobStatus.DISPATCHED, JobStatus.RUNNING, JobStatus.LOST})
WORKLOAD_ACTIVE_STATUSES = frozenset({JobStatus.DISPATCHED, JobStatus.RUNNING})


class ApiStatus(StrEnum):
    """The job status the API and CLI show."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"


_API_STATUSES = {
    JobStatus.SUBMITTED: ApiStatus.PENDING,
    JobStatus.QUEUED: ApiStatus.PENDING,
    JobStatus.DISPATCHED: ApiStatus.PENDING,
    # A lost attempt is waiting to be run again, as far as the user is concerned.
    JobStatus.LOST: ApiStatus.PENDING,
    JobStatus.RETRYING: ApiStatus.PENDING,
    JobStatus.RUNNING: ApiStatus.RUNNING,
    JobStatus.SUCCEEDED: ApiStatus.SUCCEEDED,
    JobStatus.FAILED: ApiStatus.FAILED,
    JobStatus.TIMED_OUT: ApiStatus.TIMEOUT,
    JobStatus.CANCELLED: ApiStatus.CANCELLED,
}


class JobState(BaseModel):
    """Everything known about one job after folding its events."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    job_id: UUID = Field(description="The job.")
    status: JobStatus = Field(default=JobStatus.NEW, description="Lifecycle status.")
    phase: Phase | None = Field(
        default=None, description="The API's phase: detail within the status."
    )
    attempt: int = Field(
        default=0, ge=0, description="Current attempt, from 1 once queued; never decreases."
    )

    # The submission, under the names `JobSubmittedData` uses.
    user_id: str | None = Field(default=None, description="Owner of the job.")
    tier: str | None = Field(default=None, description="Owner's tier at submission.")
    spec_id: str | None = Field(default=None, description="Identifier of the spec.")
    spec_content: str | None = Field(default=None, repr=False, description="The spec file.")
    git_repo_url: str | None = Field(default=None, description="Repository to clone.")
    git_base_branch: str | None = Field(default=None, description="Branch to start from.")
    git_credential_name: str | None = Field(
        default=None, description="Stored git credential to clone with."
    )
    time_limit_seconds: int | None = Field(default=None, description="Limit of each attempt.")
    max_attempts: int = Field(
        default=1, ge=1, description="Attempts the job may use; 1 until submitted."
    )

    queue_position: int | None = Field(default=None, description="Place in the queue, if known.")
    runner: RunnerBackend | None = Field(
        default=None, description="Backend of the current attempt's workload."
    )
    workload_name: str | None = Field(
        default=None, description="Workload of the current attempt, once dispatched."
    )

    created_at: AwareDatetime | None = Field(default=None, description="When it was submitted.")
    updated_at: AwareDatetime | None = Field(
        default=None, description="When the last event that changed the state occurred."
    )
    started_at: AwareDatetime | None = Field(
        default=None, description="When the current attempt's workload started running."
    )
    completed_at: AwareDatetime | None = Field(
        default=None, description="When the job reached its terminal state."
    )

    result_summary: str | None = Field(default=None, description="What the agents did.")
    files_changed: tuple[str, ...] = Field(default=(), description="Paths the job changed.")
    metrics: dict[str, int | float] = Field(
        default_factory=dict, description="Numbers the job reported."
    )
    error_code: str | None = Field(
        default=None, description="Why it failed or timed out, for machines."
    )
    error_message: str | None = Field(default=None, description="Why, for the user.")
    exit_code: int | None = Field(default=None, description="The worker's exit code on failure.")
    lost_reason: str | None = Field(
        default=None, description="What the watcher saw when it last lost a workload."
    )
    artifacts: tuple[JobArtifactStoredData, ...] = Field(
        default=(), description="Stored artifacts, one per attempt and name (the latest)."
    )

    cancel_requested: bool = Field(default=False, description="Whether a cancel was requested.")
    cancel_reason: str | None = Field(default=None, description="Why, as the requester said.")
    cancel_requested_at: AwareDatetime | None = Field(
        default=None, description="When the cancel was requested."
    )
    expired_at: AwareDatetime | None = Field(
        default=None, description="When the results expired; the API answers 410 after."
    )

    event_count: int = Field(default=0, ge=0, description="Distinct events folded in.")
    ignored_event_count: int = Field(
        default=0, ge=0, description="Of those, events that did not fit the state they met."
    )
    # Every event of a job is kept here; a job has tens of events, bounded by its attempts
    # and phases, so the set stays small while making redelivery harmless at any distance.
    seen_event_ids: frozenset[UUID] = Field(
        default=frozenset(), repr=False, description="Ids of the events folded in."
    )

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


def api_status(state: JobState) -> ApiStatus:
    """The status the API shows for a job; its phase is `state.phase`."""
    if state.status is JobStatus.NEW:
        raise ValueError(f"job {state.job_id} has no events, so it has no API status")
    return _API_STATUSES[state.status]


def evolve(state: JobState, event: JobEvent) -> JobState:
    """The state after `event`. Never raises for an event of this job, whatever its order."""
    if event.job_id != state.job_id:
        raise ValueError(f"event {event.id} belongs to job {event.job_id}, not {state.job_id}")
    if event.id in state.seen_event_ids:
        return state
    counted: dict[str, Any] = {
        "event_count": state.event_count + 1,
        "seen_event_ids": state.seen_event_ids | {event.id},
    }
    changes = _changes(state, event)
    if changes is None:
        return state.model_copy(
            update={**counted, "ignored_event_count": state.ignored_event_count + 1}
        )
    return state.model_copy(update={**changes, **counted, "updated_at": event.occurred_at})


def initial_state(job_id: UUID) -> JobState:
    """The state of a job before its first event: it does not exist yet."""
    return JobState(job_id=job_id)


def fold(job_id: UUID, events: Iterable[JobEvent]) -> JobState:
    """The state of job `job_id` after its events, in stream order."""
    return functools.reduce(evolve, events, initial_state(job_id))


# One case per event type, so that the match reads as the transition table.
def _changes(state: JobState, event: JobEvent) -> dict[str, Any] | None:  # noqa: PLR0911, PLR0912
    """The fields `event` changes, or None when it does not fit `state`."""
    status = state.status
    at = event.occurred_at
    match event:
        case JobSubmitted(data=data):
            if status is not JobStatus.NEW:
                return None
            return {"status": JobStatus.SUBMITTED, **dict(data), "created_at": at}
        case JobQueued(data=data):
            first = status is JobStatus.SUBMITTED and data.attempt == 1
            again = status is JobStatus.RETRYING and data.attempt == state.attempt
            if not (first or again):
                return None
            return {
                "status": JobStatus.QUEUED,
                "phase": Phase.QUEUED,
                "attempt": data.attempt,
                "queue_position": data.position,
            }
        case JobRejected(data=data):
            if status is not JobStatus.SUBMITTED:
                return None
            return {
                "status": JobStatus.FAILED,
                "error_code": data.error_code,
                "error_message": data.error_message,
                "completed_at": at,
            }
        case JobDispatched(data=data):
            if status is not JobStatus.QUEUED or data.attempt != state.attempt:
                return None
            return {
                "status": JobStatus.DISPATCHED,
                "phase": Phase.DISPATCHED,
                "queue_position": None,
                "workload_name": data.workload_name,
                "runner": data.runner,
            }
        case JobStarted(data=data):
            if status is not JobStatus.DISPATCHED or data.attempt != state.attempt:
                return None
            return {"status": JobStatus.RUNNING, "started_at": at}
        case JobPhaseChanged(data=data):
            if status not in WORKLOAD_ACTIVE_STATUSES or data.attempt != state.attempt:
                return None
            if status is JobStatus.DISPATCHED:
                # The watcher's `started` can trail the workload's own phase report; the
                # report proves the workload runs.
                return {"status": JobStatus.RUNNING, "phase": data.phase, "started_at": at}
            return {"phase": data.phase}
        case JobArtifactStored(data=data):
            if (
                state.workload_name is None
                or data.attempt != state.attempt
                or state.expired_at is not None
            ):
                return None
            kept = tuple(
                artifact
                for artifact in state.artifacts
                if (artifact.attempt, artifact.name) != (data.attempt, data.name)
            )
            return {"artifacts": (*kept, data)}
        case JobSucceeded(data=data):
            if status not in OUTCOME_PENDING_STATUSES or data.attempt != state.attempt:
                return None
            return {
                "status": JobStatus.SUCCEEDED,
                "completed_at": at,
                "result_summary": data.summary,
                "files_changed": data.files_changed,
                "metrics": data.metrics,
            }
        case JobFailed(data=data):
            if status not in OUTCOME_PENDING_STATUSES or data.attempt != state.attempt:
                return None
            return {
                "status": JobStatus.FAILED,
                "completed_at": at,
                "error_code": data.error_code,
                "error_message": data.error_message,
                "exit_code": data.exit_code,
            }
        case JobTimedOut(data=data):
            if status not in OUTCOME_PENDING_STATUSES or data.attempt != state.attempt:
                return None
            return {
                "status": JobStatus.TIMED_OUT,
                "completed_at": at,
                "error_code": TIME_LIMIT_EXCEEDED,
                "error_message": f"exceeded the time limit of {data.time_limit_seconds} seconds",
            }
        case JobCancelRequested(data=data):
            if status is JobStatus.NEW or state.is_terminal or state.cancel_requested:
                return None
            return {
                "cancel_requested": True,
                "cancel_reason": data.reason,
                "cancel_requested_at": at,
            }
        case JobCancelled():
            if status is JobStatus.NEW or state.is_terminal:
                return None
            return {"status": JobStatus.CANCELLED, "completed_at": at}
        case JobLost(data=data):
            if status not in WORKLOAD_ACTIVE_STATUSES or data.attempt != state.attempt:
                return None
            return {"status": JobStatus.LOST, "phase": None, "lost_reason": data.reason}
        case JobRetried(data=data):
            if (
                status is not JobStatus.LOST
                or data.attempt != state.attempt + 1
                or data.attempt > state.max_attempts
            ):
                return None
            return {
                "status": JobStatus.RETRYING,
                "attempt": data.attempt,
                "runner": None,
                "workload_name": None,
                "started_at": None,
            }
        case JobExpired(data=data):
            if not state.is_terminal or state.expired_at is not None:
                return None
            return {"expired_at": data.expired_at}
    assert_never(event)


class JobTransitionError(Exception):
    """A command that cannot be carried out from the job's current state."""

    def __init__(self, code: Literal["not_found", "conflict"], status: JobStatus, message: str):
        super().__init__(f"{message} (job is {status})")
        self.code = code
        self.status = status


class Command(BaseModel):
    """What every command carries into the event it yields."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    actor: str = Field(
        pattern=ACTOR_PATTERN.pattern, description="Who asks: `user:<id>` or `service:<name>`."
    )
    event_id: UUID = Field(
        default_factory=new_event_id,
        description="Id of the event the command yields; observers pass an observation id.",
    )
    occurred_at: AwareDatetime = Field(
        default_factory=utc_now, description="When the decided or observed thing happened."
    )
    correlation_id: UUID | None = Field(default=None, description="Causal chain of the event.")
    causation_id: UUID | None = Field(default=None, description="Event that caused this command.")


class SubmitJob(Command):
    """Create the job."""

    submission: JobSubmittedData = Field(description="What the user asked for.")


class QueueJob(Command):
    """Admit the job (or its retry) to the queue."""

    reason: str | None = Field(default=None, description="Why, e.g. `admitted` or `retry`.")
    position: int | None = Field(default=None, ge=1, description="Place in the queue; 1 is next.")


class RejectJob(Command):
    """Refuse a submitted job at admission."""

    error_code: str = Field(min_length=1, description="Machine-readable reason.")
    error_message: str = Field(min_length=1, description="Reason for the user.")


class DispatchJob(Command):
    """Claim the queued attempt for a workload, before creating it."""

    runner: RunnerBackend = Field(description="Backend that will run the workload.")


class StartJob(Command):
    """Record that an attempt's workload runs."""

    attempt: int = Field(ge=1, description="The attempt whose workload started.")


class ChangePhase(Command):
    """Record a phase the workload reported."""

    attempt: int = Field(ge=1, description="The attempt that reported it.")
    phase: WorkloadPhase = Field(description="The phase it entered.")


class RecordArtifact(Command):
    """Record a stored, verified artifact."""

    artifact: JobArtifactStoredData = Field(description="The artifact.")


class SucceedJob(Command):
    """Record that an attempt succeeded."""

    result: JobSucceededData = Field(description="The attempt and its result.")


class FailJob(Command):
    """Record that an attempt failed."""

    attempt: int = Field(ge=1, description="The attempt that failed.")
    error_code: str = Field(min_length=1, description="Machine-readable reason.")
    error_message: str = Field(min_length=1, description="Reason for the user.")
    exit_code: int | None = Field(default=None, description="The worker's exit code, if any.")


class TimeOutJob(Command):
    """Record that an attempt ran past the job's time limit."""

    attempt: int = Field(ge=1, description="The attempt that timed out.")


class RequestCancel(Command):
    """Ask for the job to be cancelled."""

    reason: str | None = Field(default=None, description="Why.")


class ConfirmCancel(Command):
    """Cancel a job whose cancel was requested (before deleting its workload)."""


class MarkLost(Command):
    """Record that an attempt's workload vanished without an outcome."""

    attempt: int = Field(ge=1, description="The attempt whose workload was lost.")
    reason: str = Field(min_length=1, description="What the watcher saw.")


class RetryJob(Command):
    """Run a lost attempt again as the next attempt."""

    attempt: int = Field(ge=1, description="The lost attempt.")


class ExpireResults(Command):
    """Record that a finished job's results were deleted."""

    expired_at: AwareDatetime = Field(description="When the results expired.")
    keys: tuple[str, ...] = Field(default=(), description="Object keys that were deleted.")


JobCommand = (
    SubmitJob
    | QueueJob
    | RejectJob
    | DispatchJob
    | StartJob
    | ChangePhase
    | RecordArtifact
    | SucceedJob
    | FailJob
    | TimeOutJob
    | RequestCancel
    | ConfirmCancel
    | MarkLost
    | RetryJob
    | ExpireResults
)


def decide(state: JobState, command: JobCommand) -> list[JobEvent]:  # noqa: PLR0911, PLR0912
    """The events that carry out `command`: `[]` if already done; raises `JobTransitionError`."""
    if state.status is JobStatus.NEW and not isinstance(command, SubmitJob):
        raise JobTransitionError("not_found", state.status, f"job {state.job_id} does not exist")
    match command:
        case SubmitJob():
            return _decide_submit(state, command)
        case QueueJob():
            return _decide_queue(state, command)
        case RejectJob():
            return _decide_reject(state, command)
        case DispatchJob():
            return _decide_dispatch(state, command)
        case StartJob():
            return _decide_start(state, command)
        case ChangePhase():
            return _decide_phase(state, command)
        case RecordArtifact():
            return _decide_artifact(state, command)
        case SucceedJob():
            return _decide_outcome(state, command, command.result.attempt, JobStatus.SUCCEEDED)
        case FailJob():
            return _decide_outcome(state, command, command.attempt, JobStatus.FAILED)
        case TimeOutJob():
            return _decide_outcome(state, command, command.attempt, JobStatus.TIMED_OUT)
        case RequestCancel():
            return _decide_request_cancel(state, command)
        case ConfirmCancel():
            return _decide_confirm_cancel(state, command)
        case MarkLost():
            return _decide_lost(state, command)
        case RetryJob():
            return _decide_retry(state, command)
        case ExpireResults():
            return _decide_expire(state, command)
    assert_never(command)


def _envelope(state: JobState, command: Command) -> dict[str, Any]:
    """The envelope fields of the event `command` yields for this job."""
    return {
        "id": command.event_id,
        "job_id": state.job_id,
        "occurred_at": command.occurred_at,
        "actor": command.actor,
        "correlation_id": command.correlation_id,
        "causation_id": command.causation_id,
    }


def _conflict(state: JobState, message: str) -> JobTransitionError:
    return JobTransitionError("conflict", state.status, message)


def _require_current_attempt(state: JobState, attempt: int) -> None:
    if attempt != state.attempt:
        raise _conflict(state, f"attempt {attempt} is not the current attempt {state.attempt}")


def _decide_submit(state: JobState, command: SubmitJob) -> list[JobEvent]:
    if state.status is JobStatus.NEW:
        return [JobSubmitted(**_envelope(state, command), data=command.submission)]
    submitted = {name: getattr(state, name) for name in JobSubmittedData.model_fields}
    if dict(command.submission) == submitted:
        return []
    raise _conflict(state, f"job {state.job_id} exists with a different submission")


def _decide_queue(state: JobState, command: QueueJob) -> list[JobEvent]:
    if state.status in {JobStatus.QUEUED, *WORKLOAD_ACTIVE_STATUSES}:
        return []
    if state.status not in {JobStatus.SUBMITTED, JobStatus.RETRYING}:
        raise _conflict(state, "only a submitted or retrying job can be queued")
    if state.cancel_requested:
        raise _conflict(state, "cancel was requested")
    attempt = 1 if state.status is JobStatus.SUBMITTED else state.attempt
    data = JobQueuedData(attempt=attempt, reason=command.reason, position=command.position)
    return [JobQueued(**_envelope(state, command), data=data)]


def _decide_reject(state: JobState, command: RejectJob) -> list[JobEvent]:
    # Rejection is the only way to fail before any attempt.
    if state.status is JobStatus.FAILED and state.attempt == 0:
        return []
    if state.status is not JobStatus.SUBMITTED:
        raise _conflict(state, "only a submitted job can be rejected")
    data = JobRejectedData(error_code=command.error_code, error_message=command.error_message)
    return [JobRejected(**_envelope(state, command), data=data)]


def _decide_dispatch(state: JobState, command: DispatchJob) -> list[JobEvent]:
    if state.status in WORKLOAD_ACTIVE_STATUSES:
        return []
    if state.status is not JobStatus.QUEUED:
        raise _conflict(state, "only a queued job can be dispatched")
    if state.cancel_requested:
        raise _conflict(state, "cancel was requested")
    data = JobDispatchedData(
        attempt=state.attempt,
        workload_name=workload_name(state.job_id, state.attempt),
        runner=command.runner,
    )
    return [JobDispatched(**_envelope(state, command), data=data)]


def _decide_start(state: JobState, command: StartJob) -> list[JobEvent]:
    _require_current_attempt(state, command.attempt)
    if state.status is JobStatus.RUNNING:
        return []
    if state.status is not JobStatus.DISPATCHED:
        raise _conflict(state, "only a dispatched job can start")
    data = JobStartedData(attempt=command.attempt, workload_name=state.workload_name)
    return [JobStarted(**_envelope(state, command), data=data)]


def _decide_phase(state: JobState, command: ChangePhase) -> list[JobEvent]:
    _require_current_attempt(state, command.attempt)
    if state.status not in WORKLOAD_ACTIVE_STATUSES:
        raise _conflict(state, "only a dispatched or running job changes phase")
    if state.status is JobStatus.RUNNING and state.phase == command.phase:
        return []
    data = JobPhaseChangedData(attempt=command.attempt, phase=command.phase)
    return [JobPhaseChanged(**_envelope(state, command), data=data)]


def _decide_artifact(state: JobState, command: RecordArtifact) -> list[JobEvent]:
    _require_current_attempt(state, command.artifact.attempt)
    if state.workload_name is None:
        raise _conflict(state, f"no workload ran attempt {state.attempt}")
    if state.expired_at is not None:
        raise _conflict(state, "the job's results have expired")
    if command.artifact in state.artifacts:
        return []
    return [JobArtifactStored(**_envelope(state, command), data=command.artifact)]


def _decide_outcome(
    state: JobState,
    command: SucceedJob | FailJob | TimeOutJob,
    attempt: int,
    outcome: JobStatus,
) -> list[JobEvent]:
    _require_current_attempt(state, attempt)
    if state.status is outcome:
        return []
    if state.status not in OUTCOME_PENDING_STATUSES:
        raise _conflict(state, f"only a dispatched, running or lost job can become {outcome}")
    match command:
        case SucceedJob():
            return [JobSucceeded(**_envelope(state, command), data=command.result)]
        case FailJob():
            failure = JobFailedData(
                attempt=attempt,
                error_code=command.error_code,
                error_message=command.error_message,
                exit_code=command.exit_code,
            )
            return [JobFailed(**_envelope(state, command), data=failure)]
        case TimeOutJob():
            timeout = JobTimedOutData(attempt=attempt, time_limit_seconds=state.time_limit_seconds)
            return [JobTimedOut(**_envelope(state, command), data=timeout)]
    assert_never(command)


def _decide_request_cancel(state: JobState, command: RequestCancel) -> list[JobEvent]:
    if state.status is JobStatus.CANCELLED:
        return []
    if state.is_terminal:
        raise _conflict(state, "a finished job cannot be cancelled")
    if state.cancel_requested:
        return []
    data = JobCancelRequestedData(reason=command.reason)
    return [JobCancelRequested(**_envelope(state, command), data=data)]


def _decide_confirm_cancel(state: JobState, command: ConfirmCancel) -> list[JobEvent]:
    if state.status is JobStatus.CANCELLED:
        return []
    if state.is_terminal:
        raise _conflict(state, "a finished job cannot be cancelled")
    if not state.cancel_requested:
        raise _conflict(state, "no cancel was requested")
    data = JobCancelledData(attempt=state.attempt or None)
    return [JobCancelled(**_envelope(state, command), data=data)]


def _decide_lost(state: JobState, command: MarkLost) -> list[JobEvent]:
    if _retried_or_failed_as_lost(state, command.attempt):
        return []
    _require_current_attempt(state, command.attempt)
    if state.status is JobStatus.LOST:
        return []
    if state.status not in WORKLOAD_ACTIVE_STATUSES:
        raise _conflict(state, "only a dispatched or running job can lose its workload")
    if state.attempt >= state.max_attempts:
        return [_exhausted(state, command, command.reason)]
    data = JobLostData(attempt=command.attempt, reason=command.reason)
    return [JobLost(**_envelope(state, command), data=data)]


def _decide_retry(state: JobState, command: RetryJob) -> list[JobEvent]:
    if _retried_or_failed_as_lost(state, command.attempt):
        return []
    _require_current_attempt(state, command.attempt)
    if state.status is not JobStatus.LOST:
        raise _conflict(state, "only a job whose workload was lost can be retried")
    if state.cancel_requested:
        raise _conflict(state, "cancel was requested")
    if state.attempt >= state.max_attempts:
        return [_exhausted(state, command, state.lost_reason)]
    data = JobRetriedData(attempt=state.attempt + 1)
    return [JobRetried(**_envelope(state, command), data=data)]


def _retried_or_failed_as_lost(state: JobState, attempt: int) -> bool:
    """Whether losing `attempt` has already been dealt with, by a retry or by failing the job."""
    # Only a retry after losing an attempt moves the job past it.
    retried = state.attempt > attempt
    failed = (
        state.status is JobStatus.FAILED
        and state.error_code == WORKLOAD_LOST
        and state.attempt == attempt
    )
    return retried or failed


def _exhausted(state: JobState, command: Command, reason: str | None) -> JobFailed:
    """The failure that replaces a retry when the lost attempt was the last one."""
    message = f"the workload of attempt {state.attempt} of {state.max_attempts} was lost"
    data = JobFailedData(
        attempt=state.attempt,
        error_code=WORKLOAD_LOST,
        error_message=f"{message}: {reason}" if reason else message,
    )
    return JobFailed(**_envelope(state, command), data=data)


def _decide_expire(state: JobState, command: ExpireResults) -> list[JobEvent]:
    if not state.is_terminal:
        raise _conflict(state, "only a finished job's results expire")
    if state.expired_at is not None:
        return []
    data = JobExpiredData(expired_at=command.expired_at, keys=command.keys)
    return [JobExpired(**_envelope(state, command), data=data)]
