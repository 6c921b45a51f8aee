"""`evolve`: every event type against every status, then the rules the table cannot show."""

from __future__ import annotations

import itertools
from datetime import timedelta
from uuid import UUID

import pytest

from ckrv.events.catalog import EVENT_TYPES, JobExpired, Phase, workload_name
from ckrv.events.state import (
    ApiStatus,
    JobState,
    JobStatus,
    api_status,
    evolve,
    fold,
    initial_state,
)
from tests.unit.events.job_builders import (
    JOB_ID,
    MAX_ATTEMPTS,
    SUBMISSION,
    job_in,
    make_event,
    parse_status_table,
)

# Rows: a typical job in each status (attempt 1 once queued, attempt 2 when retrying, 3 attempts
# allowed, a workload for attempt 1 from dispatch on). Columns: an event of each type about the
# job's current attempt (for `retried`, the next one). Cells: `.` ignored (counted, nothing else
# changes); `=` applied without changing the status; otherwise the status it moves to.
EVOLVE_TABLE = """
            sub  que  rej  dis  sta  pha  art  suc  fai  tim  crq  can  los  ret  exp
new         SUB  .    .    .    .    .    .    .    .    .    .    .    .    .    .
submitted   .    QUE  FAI  .    .    .    .    .    .    .    =    CAN  .    .    .
queued      .    .    .    DIS  .    .    .    .    .    .    =    CAN  .    .    .
dispatched  .    .    .    .    RUN  RUN  =    SUC  FAI  TIM  =    CAN  LOS  .    .
running     .    .    .    .    .    =    =    SUC  FAI  TIM  =    CAN  LOS  .    .
lost        .    .    .    .    .    .    =    SUC  FAI  TIM  =    CAN  .    RTR  .
retrying    .    QUE  .    .    .    .    .    .    .    .    =    CAN  .    .    .
succeeded   .    .    .    .    .    .    =    .    .    .    .    .    .    .    =
failed      .    .    .    .    .    .    =    .    .    .    .    .    .    .    =
timed_out   .    .    .    .    .    .    =    .    .    .    .    .    .    .    =
cancelled   .    .    .    .    .    .    =    .    .    .    .    .    .    .    =
"""
COLUMNS = {
    "sub": "job.submitted",
    "que": "job.queued",
    "rej": "job.rejected",
    "dis": "job.dispatched",
    "sta": "job.started",
    "pha": "job.phase-changed",
    "art": "job.artifact-stored",
    "suc": "job.succeeded",
    "fai": "job.failed",
    "tim": "job.timed-out",
    "crq": "job.cancel-requested",
    "can": "job.cancelled",
    "los": "job.lost",
    "ret": "job.retried",
    "exp": "job.expired",
}
CELLS = {
    "SUB": JobStatus.SUBMITTED,
    "QUE": JobStatus.QUEUED,
    "DIS": JobStatus.DISPATCHED,
    "RUN": JobStatus.RUNNING,
    "LOS": JobStatus.LOST,
    "RTR": JobStatus.RETRYING,
    "SUC": JobStatus.SUCCEEDED,
    "FAI": JobStatus.FAILED,
    "TIM": JobStatus.TIMED_OUT,
    "CAN": JobStatus.CANCELLED,
}
IGNORED = "."
UNCHANGED = "="


TABLE = parse_status_table(EVOLVE_TABLE, COLUMNS)


def test_the_table_covers_every_status_and_event_type() -> None:
    assert set(TABLE) == set(itertools.product(JobStatus, EVENT_TYPES))


def counted_only(state: JobState, after: JobState) -> JobState:
    """`state` as an ignored event would leave it."""
    return state.model_copy(
        update={
            "event_count": after.event_count,
            "ignored_event_count": after.ignored_event_count,
            "seen_event_ids": after.seen_event_ids,
        }
    )


@pytest.mark.parametrize(("status", "event_type"), sorted(TABLE))
def test_evolve(status: JobStatus, event_type: str) -> None:
    state = job_in(status)
    attempt = max(state.attempt, 1) + (1 if event_type == "job.retried" else 0)
    occurred = make_event(event_type, attempt)

    after = evolve(state, occurred)

    assert after.event_count == state.event_count + 1
    assert occurred.id in after.seen_event_ids
    cell = TABLE[status, event_type]
    if cell == IGNORED:
        assert after.ignored_event_count == state.ignored_event_count + 1
        assert after == counted_only(state, after)
    else:
        assert after.ignored_event_count == state.ignored_event_count
        assert after.status is (status if cell == UNCHANGED else CELLS[cell])
        assert after != counted_only(state, after)
        assert after.updated_at == occurred.occurred_at


def test_submitted_records_the_submission() -> None:
    submitted = make_event("job.submitted")

    state = evolve(initial_state(JOB_ID), submitted)

    assert state.status is JobStatus.SUBMITTED
    recorded = {name: getattr(state, name) for name in type(SUBMISSION).model_fields}
    assert recorded == dict(SUBMISSION)
    assert state.created_at == submitted.occurred_at
    assert state.attempt == 0
    assert state.phase is None


def test_every_submission_field_has_a_place_in_the_state() -> None:
    assert set(type(SUBMISSION).model_fields) <= set(JobState.model_fields)


def test_a_job_runs_to_success_and_its_results_expire() -> None:
    logs = make_event("job.artifact-stored", name="logs.jsonl", key=f"jobs/{JOB_ID}/1/logs.jsonl")
    expired = make_event("job.expired")
    assert isinstance(expired, JobExpired)

    state = fold(
        JOB_ID,
        [
            make_event("job.submitted"),
            make_event("job.queued"),
            make_event("job.dispatched"),
            make_event("job.started"),
            make_event("job.phase-changed", phase="planning"),
            make_event("job.phase-changed", phase="uploading"),
            make_event("job.artifact-stored"),
            make_event("job.succeeded"),
            logs,  # the log archive is stored once the job has ended
            expired,
            make_event("job.artifact-stored", name="late.txt", key="jobs/x/1/late.txt"),
        ],
    )

    assert state.status is JobStatus.SUCCEEDED
    assert api_status(state) is ApiStatus.SUCCEEDED
    assert state.phase is Phase.UPLOADING
    assert state.attempt == 1
    assert state.workload_name == workload_name(JOB_ID, 1)
    assert [artifact.name for artifact in state.artifacts] == ["diff.patch", "logs.jsonl"]
    assert state.result_summary == "Added a rate limiter."
    assert state.files_changed == ("orders/api.py",)
    assert state.metrics == {"duration_seconds": 822.4, "output_tokens": 22931}
    assert state.expired_at == expired.data.expired_at
    assert (state.event_count, state.ignored_event_count) == (11, 1)


def test_a_lost_workload_is_retried_as_the_next_attempt() -> None:
    state = fold(
        JOB_ID,
        [
            make_event("job.submitted"),
            make_event("job.queued"),
            make_event("job.dispatched"),
            make_event("job.started"),
            make_event("job.lost"),
            make_event("job.retried", 2),
            make_event("job.queued", 2, reason="retry"),
            make_event("job.dispatched", 2),
            make_event("job.succeeded", 1),  # the first workload's late word no longer counts
            make_event("job.started", 2),
            make_event("job.succeeded", 2),
        ],
    )

    assert state.status is JobStatus.SUCCEEDED
    assert state.attempt == 2
    assert state.workload_name == workload_name(JOB_ID, 2)
    assert state.lost_reason == "node drained"
    assert state.ignored_event_count == 1


def test_a_lost_job_waits_as_pending_with_no_phase() -> None:
    state = evolve(job_in(JobStatus.RUNNING), make_event("job.lost"))

    assert api_status(state) is ApiStatus.PENDING
    assert state.phase is None
    assert state.lost_reason == "node drained"


def test_retrying_forgets_the_lost_workload() -> None:
    state = evolve(job_in(JobStatus.LOST), make_event("job.retried", 2))

    assert (state.attempt, state.workload_name, state.runner, state.started_at) == (
        2,
        None,
        None,
        None,
    )


def test_retries_stop_at_max_attempts() -> None:
    last = job_in(JobStatus.LOST, attempt=MAX_ATTEMPTS, workload_name=workload_name(JOB_ID, 3))

    assert evolve(last, make_event("job.retried", MAX_ATTEMPTS + 1)).ignored_event_count == 1


def test_a_retry_cannot_skip_attempts() -> None:
    assert evolve(job_in(JobStatus.LOST), make_event("job.retried", 3)).ignored_event_count == 1


@pytest.mark.parametrize(
    ("status", "event_type", "attempt"),
    [
        (JobStatus.SUBMITTED, "job.queued", 2),
        (JobStatus.RETRYING, "job.queued", 1),
        (JobStatus.QUEUED, "job.dispatched", 2),
        (JobStatus.DISPATCHED, "job.started", 2),
        (JobStatus.RUNNING, "job.phase-changed", 2),
        (JobStatus.RUNNING, "job.artifact-stored", 2),
        (JobStatus.RUNNING, "job.succeeded", 2),
        (JobStatus.RUNNING, "job.failed", 2),
        (JobStatus.RUNNING, "job.timed-out", 2),
        (JobStatus.RUNNING, "job.lost", 2),
        (JobStatus.RETRYING, "job.succeeded", 1),
        (JobStatus.RETRYING, "job.lost", 1),
    ],
)
def test_an_event_about_another_attempt_is_ignored(
    status: JobStatus, event_type: str, attempt: int
) -> None:
    state = job_in(status)

    assert evolve(state, make_event(event_type, attempt)).ignored_event_count == 1


def test_a_phase_report_before_the_start_means_running() -> None:
    phase = make_event("job.phase-changed", phase="cloning")

    state = evolve(job_in(JobStatus.DISPATCHED), phase)

    assert (state.status, state.phase, state.started_at) == (
        JobStatus.RUNNING,
        Phase.CLONING,
        phase.occurred_at,
    )
    assert evolve(state, make_event("job.started")).ignored_event_count == 1


def test_an_artifact_stored_again_replaces_the_earlier_one() -> None:
    state = job_in(JobStatus.RUNNING)
    state = evolve(state, make_event("job.artifact-stored", size_bytes=1))
    state = evolve(state, make_event("job.artifact-stored", size_bytes=2))

    assert [(artifact.name, artifact.size_bytes) for artifact in state.artifacts] == [
        ("diff.patch", 2)
    ]


def test_no_artifact_is_recorded_for_an_attempt_no_workload_ran() -> None:
    cancelled_in_queue = job_in(JobStatus.CANCELLED, workload_name=None, runner=None)

    assert evolve(cancelled_in_queue, make_event("job.artifact-stored")).ignored_event_count == 1


def test_results_expire_once() -> None:
    first = evolve(job_in(JobStatus.FAILED), make_event("job.expired"))
    assert first.expired_at is not None
    later = make_event("job.expired", expired_at=(first.expired_at + timedelta(days=1)).isoformat())

    second = evolve(first, later)

    assert second.expired_at == first.expired_at
    assert second.ignored_event_count == 1


def test_only_the_first_cancel_request_counts() -> None:
    state = evolve(job_in(JobStatus.RUNNING), make_event("job.cancel-requested", reason="first"))
    state = evolve(state, make_event("job.cancel-requested", reason="second"))

    assert (state.cancel_requested, state.cancel_reason) == (True, "first")
    assert state.ignored_event_count == 1


def test_an_outcome_that_beats_the_cancel_wins() -> None:
    state = evolve(job_in(JobStatus.RUNNING), make_event("job.cancel-requested"))
    state = evolve(state, make_event("job.succeeded"))
    state = evolve(state, make_event("job.cancelled"))

    assert state.status is JobStatus.SUCCEEDED
    assert state.cancel_requested
    assert state.ignored_event_count == 1


def test_the_first_terminal_event_wins() -> None:
    state = evolve(job_in(JobStatus.RUNNING), make_event("job.cancelled"))
    state = evolve(state, make_event("job.failed"))

    assert state.status is JobStatus.CANCELLED
    assert state.error_code is None


def test_a_timeout_explains_itself() -> None:
    state = evolve(job_in(JobStatus.RUNNING), make_event("job.timed-out", time_limit_seconds=600))

    assert api_status(state) is ApiStatus.TIMEOUT
    assert state.error_code == "time_limit_exceeded"
    assert state.error_message == "exceeded the time limit of 600 seconds"


def test_a_rejection_fails_the_job_before_any_attempt() -> None:
    state = evolve(job_in(JobStatus.SUBMITTED), make_event("job.rejected"))

    assert (state.status, state.attempt, state.error_code) == (
        JobStatus.FAILED,
        0,
        "quota_exceeded",
    )


def test_an_event_seen_before_changes_nothing_at_all() -> None:
    phase = make_event("job.phase-changed", phase="planning")
    state = evolve(job_in(JobStatus.RUNNING), phase)
    state = evolve(state, make_event("job.phase-changed", phase="executing"))

    assert evolve(state, phase) is state


def test_an_event_of_another_job_is_refused() -> None:
    other = initial_state(UUID(int=1))

    with pytest.raises(ValueError, match="belongs to job"):
        evolve(other, make_event("job.submitted"))


def test_fold_of_nothing_is_a_new_job() -> None:
    assert fold(JOB_ID, []) == initial_state(JOB_ID)


API_STATUSES = {
    JobStatus.SUBMITTED: ApiStatus.PENDING,
    JobStatus.QUEUED: ApiStatus.PENDING,
    JobStatus.DISPATCHED: ApiStatus.PENDING,
    JobStatus.LOST: ApiStatus.PENDING,
    JobStatus.RETRYING: ApiStatus.PENDING,
    JobStatus.RUNNING: ApiStatus.RUNNING,
    JobStatus.SUCCEEDED: ApiStatus.SUCCEEDED,
    JobStatus.FAILED: ApiStatus.FAILED,
    JobStatus.TIMED_OUT: ApiStatus.TIMEOUT,
    JobStatus.CANCELLED: ApiStatus.CANCELLED,
}


@pytest.mark.parametrize(("status", "expected"), API_STATUSES.items())
def test_api_status(status: JobStatus, expected: ApiStatus) -> None:
    assert api_status(job_in(status)) is expected


def test_a_job_without_events_has_no_api_status() -> None:
    with pytest.raises(ValueError, match="no events"):
        api_status(initial_state(JOB_ID))
