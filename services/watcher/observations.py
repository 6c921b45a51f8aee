"""What a workload's status means for its job: the commands an observation yields.

Pure functions of the status, the job's state and what the worker left (its last
log line, its `result.json` as checked against storage). Every command carries an
observation id derived from the workload and what was seen, so seeing the same thing
twice (a re-listed watch, a restarted watcher) appends nothing new. A success records
each verified artifact (`job.artifact-stored`) before `job.succeeded`, so the job ends
only once its results can be downloaded.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ckrv.events.catalog import JobSucceededData
from ckrv.events.envelope import Event, observation_event_id
from ckrv.events.state import (
    FailJob,
    JobCommand,
    JobState,
    JobStatus,
    MarkLost,
    RecordArtifact,
    RetryJob,
    StartJob,
    SucceedJob,
    TimeOutJob,
    decide,
    evolve,
)
from ckrv.services.artifacts.verification import (
    RESULT_MISSING,
    RejectedResult,
    ResultCheck,
    VerifiedResult,
)
from ckrv.services.runners.base import FailureReason, WorkloadState, WorkloadStatus

ACTOR = "service:watcher"

# The worker's exit codes (ARCHITECTURE.md) and what each says about the job.
_EXIT_CODE_ERRORS = {
    1: ("job_failed", "the job failed"),
    2: ("infrastructure_error", "the job's workload hit an infrastructure error"),
    3: ("verification_failed", "the result did not pass the spec's verification"),
}
# Ends that say nothing against the job itself: another attempt may well succeed. A stop
# nobody asked for through the job (an operator, a drained node) is one of them.
_LOST_REASONS = {FailureReason.LOST, FailureReason.EVICTED, FailureReason.STOPPED}
# A success observed without its result checked counts as one without a result.
_UNCHECKED_RESULT = RejectedResult(
    RESULT_MISSING, "the job's workload ended without a readable result.json"
)


@dataclass(frozen=True)
class WorkerFinish:
    """The worker's last log line (`event: finished`): why it ended, in its own words."""

    exit_code: int | None
    reason: str | None
    message: str

    @classmethod
    def from_output_tail(cls, tail: bytes) -> WorkerFinish | None:
        """The last `finished` line in the end of a workload's output, if there is one."""
        for line in reversed(tail.splitlines()):
            try:
                record: Any = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("event") == "finished":
                exit_code = record.get("exit_code")
                reason = record.get("reason")
                return cls(
                    exit_code if isinstance(exit_code, int) else None,
                    reason if isinstance(reason, str) else None,
                    str(record.get("message", "")),
                )
        return None


def observed(  # noqa: PLR0911 - one answer per workload state
    status: WorkloadStatus,
    state: JobState,
    *,
    result: ResultCheck | None = None,
    finish: WorkerFinish | None = None,
    now: datetime | None = None,
) -> list[JobCommand]:
    """The commands that record `status` on the job; none if it is old news."""
    if state.is_terminal or state.workload_name != status.name or state.attempt != status.attempt:
        return []
    attempt, name = status.attempt, status.name
    now = now or datetime.now(UTC)
    start: list[JobCommand] = (
        [
            StartJob(
                actor=ACTOR,
                attempt=attempt,
                event_id=observation_event_id(name, "started"),
                occurred_at=status.started_at or now,
            )
        ]
        if state.status is JobStatus.DISPATCHED
        else []
    )
    ended_at = status.finished_at or now
    match status.state:
        case WorkloadState.PENDING:
            return []
        case WorkloadState.RUNNING:
            return start
        case WorkloadState.SUCCEEDED:
            return [*start, *_success(status, result, ended_at)]
        case WorkloadState.FAILED:
            if status.reason is FailureReason.STOPPED and state.cancel_requested:
                return []  # the dispatcher stopped it for the cancel, and records that
            return [*start, *_failure(status, finish, ended_at)]
        case WorkloadState.GONE:
            if state.cancel_requested:
                return []  # deleted for the cancel (how Kubernetes stops a workload)
            return lost(status, "the workload was deleted before it finished", now)
    return []


def _success(
    status: WorkloadStatus, check: ResultCheck | None, ended_at: datetime
) -> list[JobCommand]:
    if not isinstance(check, VerifiedResult):
        rejected = check or _UNCHECKED_RESULT
        return [
            FailJob(
                actor=ACTOR,
                attempt=status.attempt,
                error_code=rejected.error_code,
                error_message=rejected.message,
                exit_code=status.exit_code,
                event_id=observation_event_id(status.name, "failed"),
                occurred_at=ended_at,
            )
        ]
    result = check.result
    stored: list[JobCommand] = [
        RecordArtifact(
            actor=ACTOR,
            artifact=artifact,
            event_id=observation_event_id(status.name, "artifact-stored", artifact.name),
            occurred_at=ended_at,
        )
        for artifact in check.artifacts
    ]
    succeeded = SucceedJob(
        actor=ACTOR,
        result=JobSucceededData(
            attempt=status.attempt,
            summary=result.summary,
            files_changed=result.files_changed,
            metrics={
                **result.metrics,
                "insertions": result.insertions,
                "deletions": result.deletions,
            },
        ),
        event_id=observation_event_id(status.name, "succeeded"),
        occurred_at=ended_at,
    )
    return [*stored, succeeded]


def _failure(
    status: WorkloadStatus, finish: WorkerFinish | None, ended_at: datetime
) -> list[JobCommand]:
    reason = status.reason
    if reason in _LOST_REASONS:
        return lost(status, status.message or f"the workload ended: {reason}", ended_at)
    if reason is FailureReason.DEADLINE_EXCEEDED or (finish and finish.reason == "timeout"):
        return [
            TimeOutJob(
                actor=ACTOR,
                attempt=status.attempt,
                event_id=observation_event_id(status.name, "timed-out"),
                occurred_at=ended_at,
            )
        ]
    error_code, message = _error(status, finish)
    return [
        FailJob(
            actor=ACTOR,
            attempt=status.attempt,
            error_code=error_code,
            error_message=message,
            exit_code=status.exit_code,
            event_id=observation_event_id(status.name, "failed"),
            occurred_at=ended_at,
        )
    ]


def _error(status: WorkloadStatus, finish: WorkerFinish | None) -> tuple[str, str]:
    match status.reason:
        case FailureReason.OOM_KILLED:
            return "out_of_memory", "the job used more memory than its workload may"
        case FailureReason.IMAGE_PULL_BACK_OFF:
            return "image_pull_failed", status.message or "the worker image could not be pulled"
        case FailureReason.START_ERROR:
            return "infrastructure_error", status.message or "the worker could not be started"
    fallback_code, fallback_message = _EXIT_CODE_ERRORS.get(
        status.exit_code or 0, ("worker_crashed", f"the worker exited with {status.exit_code}")
    )
    if finish is None:
        return fallback_code, fallback_message
    return finish.reason or fallback_code, finish.message or fallback_message


def lost(status: WorkloadStatus, reason: str, at: datetime) -> list[JobCommand]:
    """The attempt's workload vanished: record it, and retry it (or fail, if it was the last)."""
    return [
        MarkLost(
            actor=ACTOR,
            attempt=status.attempt,
            reason=reason,
            event_id=observation_event_id(status.name, "lost"),
            occurred_at=at,
        ),
        RetryJob(
            actor=ACTOR,
            attempt=status.attempt,
            event_id=observation_event_id(status.name, "retried"),
            occurred_at=at,
        ),
    ]


def decide_all(state: JobState, commands: Sequence[JobCommand]) -> list[Event]:
    """The events of `commands` decided one after the other, each on the state the last left."""
    events: list[Event] = []
    for command in commands:
        for event in decide(state, command):
            state = evolve(state, event)
            events.append(event)
    return events
