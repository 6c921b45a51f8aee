"""What a workload's status means for its job: the events an observation records."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ckrv.events.catalog import (
    JobArtifactStored,
    JobArtifactStoredData,
    JobFailed,
    JobLost,
    JobRetried,
    JobStarted,
    JobSucceeded,
    JobTimedOut,
    workload_name,
)
from ckrv.events.state import JobStatus
from ckrv.services.artifacts.verification import RejectedResult, VerifiedResult
from ckrv.services.runners.base import FailureReason, WorkloadState, WorkloadStatus
from ckrv.services.watcher.observations import WorkerFinish, decide_all, observed
from ckrv.services.worker.result import JobResult
from tests.unit.events.job_builders import JOB_ID, SHA256, job_in

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
NAME = workload_name(JOB_ID, 1)


def status(state: WorkloadState, **fields: object) -> WorkloadStatus:
    values: dict[str, object] = {
        "name": NAME,
        "job_id": JOB_ID,
        "attempt": 1,
        "state": state,
        "created_at": NOW - timedelta(minutes=5),
        "started_at": NOW - timedelta(minutes=4),
    } | fields
    return WorkloadStatus(**values)  # type: ignore[arg-type]


def result() -> VerifiedResult:
    """A result whose artifacts were found stored as it lists them."""
    artifacts = tuple(
        JobArtifactStoredData(
            attempt=1, name=name, key=f"jobs/{JOB_ID}/1/{name}", size_bytes=10, sha256=SHA256
        )
        for name in ("result.json", "diff.patch", "repo.bundle")
    )
    return VerifiedResult(job_result(), artifacts)


def job_result() -> JobResult:
    return JobResult.model_validate(
        {
            "job_id": str(JOB_ID),
            "attempt": 1,
            "spec_id": "add-rate-limiter",
            "summary": "Changed 1 file.",
            "base_branch": "main",
            "base_commit": "a" * 40,
            "feature_branch": "ckrv/12345678",
            "head_commit": "b" * 40,
            "files_changed": ["README.md"],
            "insertions": 3,
            "deletions": 1,
            "agents": [],
            "metrics": {"duration_seconds": 4.5},
            "artifacts": {},
        }
    )


def test_a_running_workload_starts_a_dispatched_job_once() -> None:
    dispatched = job_in(JobStatus.DISPATCHED)
    (started,) = decide_all(dispatched, observed(status(WorkloadState.RUNNING), dispatched))
    assert isinstance(started, JobStarted)
    again = decide_all(dispatched, observed(status(WorkloadState.RUNNING), dispatched))
    assert again[0].id == started.id  # the same observation gives the same event id
    assert observed(status(WorkloadState.RUNNING), job_in(JobStatus.RUNNING)) == []


def test_success_carries_the_result_and_starts_the_job_if_unseen() -> None:
    dispatched = job_in(JobStatus.DISPATCHED)
    seen = status(WorkloadState.SUCCEEDED, exit_code=0, finished_at=NOW)
    started, *stored, succeeded = decide_all(
        dispatched, observed(seen, dispatched, result=result())
    )
    assert isinstance(started, JobStarted)
    assert [event.data for event in stored if isinstance(event, JobArtifactStored)] == list(
        result().artifacts
    )
    assert isinstance(succeeded, JobSucceeded)
    assert succeeded.data.summary == "Changed 1 file."
    assert succeeded.data.files_changed == ("README.md",)
    assert succeeded.data.metrics == {"duration_seconds": 4.5, "insertions": 3, "deletions": 1}
    assert succeeded.occurred_at == NOW


def test_artifacts_are_recorded_once_before_the_success() -> None:
    running = job_in(JobStatus.RUNNING)
    seen = status(WorkloadState.SUCCEEDED, exit_code=0, finished_at=NOW)
    first = decide_all(running, observed(seen, running, result=result()))
    again = decide_all(running, observed(seen, running, result=result()))
    assert [event.type for event in first] == [
        *["job.artifact-stored"] * 3,
        "job.succeeded",
    ]
    assert [event.id for event in again] == [event.id for event in first]
    assert len({event.id for event in first}) == 4


def test_success_without_a_result_fails() -> None:
    running = job_in(JobStatus.RUNNING)
    (failed,) = decide_all(running, observed(status(WorkloadState.SUCCEEDED), running))
    assert isinstance(failed, JobFailed)
    assert failed.data.error_code == "result_missing"


def test_a_rejected_result_fails_the_job_with_its_reason() -> None:
    running = job_in(JobStatus.RUNNING)
    rejected = RejectedResult("artifact_invalid", "repo.bundle is missing from storage")
    seen = status(WorkloadState.SUCCEEDED, exit_code=0, finished_at=NOW)
    (failed,) = decide_all(running, observed(seen, running, result=rejected))
    assert isinstance(failed, JobFailed)
    assert failed.data.error_code == "artifact_invalid"
    assert failed.data.error_message == "repo.bundle is missing from storage"
    assert failed.data.exit_code == 0


def test_the_workers_last_line_explains_a_failure() -> None:
    running = job_in(JobStatus.RUNNING)
    tail = (
        b'{"event": "phase", "phase": "cloning", "message": "cloning"}\n'
        b'{"event": "finished", "exit_code": 1, "reason": "clone_failed",'
        b' "message": "the repository refused the credential"}\n'
    )
    finish = WorkerFinish.from_output_tail(tail)
    seen = status(WorkloadState.FAILED, exit_code=1, reason=FailureReason.ERROR)
    (failed,) = decide_all(running, observed(seen, running, finish=finish))
    assert isinstance(failed, JobFailed)
    assert failed.data.error_code == "clone_failed"
    assert failed.data.error_message == "the repository refused the credential"
    assert failed.data.exit_code == 1


def test_exit_codes_explain_a_failure_without_a_last_line() -> None:
    running = job_in(JobStatus.RUNNING)
    for exit_code, error_code in [(2, "infrastructure_error"), (3, "verification_failed")]:
        seen = status(WorkloadState.FAILED, exit_code=exit_code, reason=FailureReason.ERROR)
        (failed,) = decide_all(running, observed(seen, running))
        assert isinstance(failed, JobFailed)
        assert failed.data.error_code == error_code


def test_deadline_and_memory() -> None:
    running = job_in(JobStatus.RUNNING)
    deadline = status(WorkloadState.FAILED, reason=FailureReason.DEADLINE_EXCEEDED)
    (timed_out,) = decide_all(running, observed(deadline, running))
    assert isinstance(timed_out, JobTimedOut)
    oom = status(WorkloadState.FAILED, exit_code=137, reason=FailureReason.OOM_KILLED)
    (failed,) = decide_all(running, observed(oom, running))
    assert isinstance(failed, JobFailed)
    assert failed.data.error_code == "out_of_memory"


def test_a_lost_workload_is_retried_until_the_attempts_run_out() -> None:
    running = job_in(JobStatus.RUNNING)
    lost_supervisor = status(WorkloadState.FAILED, reason=FailureReason.LOST)
    lost, retried = decide_all(running, observed(lost_supervisor, running))
    assert isinstance(lost, JobLost)
    assert isinstance(retried, JobRetried)
    assert retried.data.attempt == 2
    last = job_in(JobStatus.RUNNING, max_attempts=1)
    (failed,) = decide_all(last, observed(status(WorkloadState.GONE), last))
    assert isinstance(failed, JobFailed)
    assert failed.data.error_code == "workload_lost"


def test_a_stop_nobody_asked_for_through_the_job_is_a_lost_attempt() -> None:
    running = job_in(JobStatus.RUNNING)
    stopped = status(WorkloadState.FAILED, exit_code=143, reason=FailureReason.STOPPED)
    lost, retried = decide_all(running, observed(stopped, running))
    assert isinstance(lost, JobLost)
    assert isinstance(retried, JobRetried)


def test_finished_jobs_and_other_attempts_ignore_observations() -> None:
    stopped = status(WorkloadState.FAILED, reason=FailureReason.STOPPED)
    assert observed(stopped, job_in(JobStatus.CANCELLED)) == []
    assert observed(stopped, job_in(JobStatus.RUNNING, cancel_requested=True)) == []
    deleted = status(WorkloadState.GONE)
    assert observed(deleted, job_in(JobStatus.RUNNING, cancel_requested=True)) == []
    late = status(WorkloadState.SUCCEEDED)
    assert observed(late, job_in(JobStatus.CANCELLED), result=result()) == []
    assert observed(late, job_in(JobStatus.RETRYING), result=result()) == []
