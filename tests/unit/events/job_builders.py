"""Test builders: a typical job in each status, and events and commands about it.

The jobs are written field by field, not folded from events, so that tests of
`evolve` and `decide` do not start from states those same functions produced.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

from ckrv.events.catalog import (
    JOB_EVENT_ADAPTER,
    JobEvent,
    JobSubmittedData,
    Phase,
    RunnerBackend,
    workload_name,
)
from ckrv.events.state import (
    ChangePhase,
    ConfirmCancel,
    DispatchJob,
    ExpireResults,
    FailJob,
    JobCommand,
    JobState,
    JobStatus,
    MarkLost,
    QueueJob,
    RecordArtifact,
    RejectJob,
    RequestCancel,
    RetryJob,
    StartJob,
    SubmitJob,
    SucceedJob,
    TimeOutJob,
)

JOB_ID = UUID("0192f4a1-7c3e-7b2a-9d41-5e6f7a8b9c0d")
SUBMITTED_AT = datetime(2025, 3, 14, 9, 0, tzinfo=UTC)
MAX_ATTEMPTS = 3
SHA256 = "9f2c5d0e8a7b6c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d"

SUBMISSION = JobSubmittedData(
    user_id="u_7f3k2m9q",
    tier="pro",
    spec_id="add-rate-limiter",
    spec_content="# Add a rate limiter\n",
    git_repo_url="https://github.com/acme/orders-service.git",
    git_base_branch="main",
    git_credential_name="acme-github-pat",
    time_limit_seconds=3600,
    max_attempts=MAX_ATTEMPTS,
)


def _at(minutes: int) -> datetime:
    return SUBMITTED_AT + timedelta(minutes=minutes)


def _job_fields(status: JobStatus) -> dict[str, Any]:
    """The fields of a typical job in `status`: attempt 1 once queued, attempt 2 when retrying."""
    if status is JobStatus.NEW:
        return {}
    submitted = {**dict(SUBMISSION), "created_at": SUBMITTED_AT, "updated_at": SUBMITTED_AT}
    queued = {**submitted, "attempt": 1, "phase": Phase.QUEUED, "queue_position": 1}
    dispatched = {
        **queued,
        "phase": Phase.DISPATCHED,
        "queue_position": None,
        "runner": RunnerBackend.LOCAL,
        "workload_name": workload_name(JOB_ID, 1),
    }
    running = {**dispatched, "phase": Phase.CLONING, "started_at": _at(2)}
    lost = {**running, "phase": None, "lost_reason": "node drained"}
    ended = {**running, "completed_at": _at(20)}
    return {
        JobStatus.SUBMITTED: submitted,
        JobStatus.QUEUED: queued,
        JobStatus.DISPATCHED: dispatched,
        JobStatus.RUNNING: running,
        JobStatus.LOST: lost,
        JobStatus.RETRYING: {
            **lost,
            "attempt": 2,
            "runner": None,
            "workload_name": None,
            "started_at": None,
        },
        JobStatus.SUCCEEDED: {**ended, "result_summary": "Added a rate limiter."},
        JobStatus.FAILED: {**ended, "error_code": "agent_failed", "error_message": "exit 1"},
        JobStatus.TIMED_OUT: {
            **ended,
            "error_code": "time_limit_exceeded",
            "error_message": "exceeded the time limit of 3600 seconds",
        },
        JobStatus.CANCELLED: {**ended, "cancel_requested": True, "cancel_requested_at": _at(19)},
    }[status]


def job_in(status: JobStatus, **overrides: Any) -> JobState:
    """A typical job in `status` (max 3 attempts), with `overrides` applied."""
    return JobState.model_validate(
        {"job_id": JOB_ID, "status": status, **_job_fields(status), **overrides}
    )


def _event_data(event_type: str, attempt: int) -> dict[str, Any]:
    return {
        "job.submitted": dict(SUBMISSION),
        "job.queued": {"attempt": attempt, "reason": "admitted", "position": 1},
        "job.rejected": {"error_code": "quota_exceeded", "error_message": "too many jobs"},
        "job.dispatched": {
            "attempt": attempt,
            "workload_name": workload_name(JOB_ID, attempt),
            "runner": "local",
        },
        "job.started": {"attempt": attempt, "workload_name": workload_name(JOB_ID, attempt)},
        "job.phase-changed": {"attempt": attempt, "phase": "executing"},
        "job.artifact-stored": {
            "attempt": attempt,
            "name": "diff.patch",
            "key": f"jobs/{JOB_ID}/{attempt}/diff.patch",
            "size_bytes": 2048,
            "sha256": SHA256,
        },
        "job.succeeded": {
            "attempt": attempt,
            "summary": "Added a rate limiter.",
            "files_changed": ["orders/api.py"],
            "metrics": {"duration_seconds": 822.4, "output_tokens": 22931},
        },
        "job.failed": {
            "attempt": attempt,
            "error_code": "agent_failed",
            "error_message": "the agent exited with 1",
            "exit_code": 1,
        },
        "job.timed-out": {"attempt": attempt, "time_limit_seconds": 3600},
        "job.cancel-requested": {"reason": "wrong spec"},
        "job.cancelled": {"attempt": attempt},
        "job.lost": {"attempt": attempt, "reason": "node drained"},
        "job.retried": {"attempt": attempt},
        "job.expired": {"expired_at": _at(7 * 24 * 60).isoformat(), "keys": ["jobs/x/1/a"]},
    }[event_type]


def make_event(
    event_type: str, attempt: int = 1, *, event_id: UUID | None = None, **data: Any
) -> JobEvent:
    """An event of this job about `attempt` (for `job.retried`, the new attempt), fresh id."""
    return JOB_EVENT_ADAPTER.validate_python(
        {
            "type": event_type,
            "id": event_id or uuid4(),
            "job_id": JOB_ID,
            "occurred_at": _at(30),
            "actor": "service:test",
            "data": {**_event_data(event_type, attempt), **data},
        }
    )


def make_command(kind: str, attempt: int = 1, **fields: Any) -> JobCommand:
    """A command of `kind` about `attempt` (for `retry`, the lost attempt); `fields` override."""
    artifact = _event_data("job.artifact-stored", attempt)
    result = _event_data("job.succeeded", attempt)
    commands: dict[str, tuple[type[JobCommand], dict[str, Any]]] = {
        "submit": (SubmitJob, {"actor": "user:u_7f3k2m9q", "submission": SUBMISSION}),
        "queue": (QueueJob, {"actor": "service:dispatcher", "reason": "admitted"}),
        "reject": (
            RejectJob,
            {"actor": "service:dispatcher", "error_code": "quota", "error_message": "no"},
        ),
        "dispatch": (DispatchJob, {"actor": "service:dispatcher", "runner": "local"}),
        "start": (StartJob, {"actor": "service:watcher", "attempt": attempt}),
        "phase": (
            ChangePhase,
            {"actor": "service:log-relay", "attempt": attempt, "phase": "executing"},
        ),
        "artifact": (RecordArtifact, {"actor": "service:artifacts", "artifact": artifact}),
        "succeed": (SucceedJob, {"actor": "service:watcher", "result": result}),
        "fail": (
            FailJob,
            {
                "actor": "service:watcher",
                "attempt": attempt,
                "error_code": "agent_failed",
                "error_message": "the agent exited with 1",
                "exit_code": 1,
            },
        ),
        "timeout": (TimeOutJob, {"actor": "service:watcher", "attempt": attempt}),
        "cancel": (RequestCancel, {"actor": "user:u_7f3k2m9q", "reason": "wrong spec"}),
        "confirm": (ConfirmCancel, {"actor": "service:dispatcher"}),
        "lost": (
            MarkLost,
            {"actor": "service:watcher", "attempt": attempt, "reason": "node drained"},
        ),
        "retry": (RetryJob, {"actor": "service:dispatcher", "attempt": attempt}),
        "expire": (
            ExpireResults,
            {
                "actor": "service:artifacts",
                "expired_at": _at(7 * 24 * 60),
                "keys": ["jobs/x/1/a"],
            },
        ),
    }
    command_class, defaults = commands[kind]
    return command_class.model_validate({**defaults, **fields})


def parse_status_table(text: str, columns: dict[str, str]) -> dict[tuple[JobStatus, str], str]:
    """Read a written-out table: a header of column abbreviations, then one row per status."""
    header, *rows = text.strip().splitlines()
    keys = [columns[name] for name in header.split()]
    table = {}
    for row in rows:
        status, *cells = row.split()
        assert len(cells) == len(keys), row
        for key, cell in zip(keys, cells, strict=True):
            table[JobStatus(status), key] = cell
    return table
