"""`decide`: every command against every status, then idempotence, refusals, event contents."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from uuid import UUID

import pytest
from pydantic import ValidationError

from ckrv.events.catalog import (
    JobCancelled,
    JobDispatched,
    JobFailed,
    JobQueued,
    JobRetried,
    Phase,
    RunnerBackend,
    workload_name,
)
from ckrv.events.state import (
    JobState,
    JobStatus,
    JobTransitionError,
    RequestCancel,
    SubmitJob,
    decide,
    evolve,
)
from tests.unit.events.job_builders import (
    JOB_ID,
    MAX_ATTEMPTS,
    SUBMISSION,
    job_in,
    make_command,
    make_event,
    parse_status_table,
)

# Rows: the typical jobs of `job_builders.job_in` (attempt 1 once queued, attempt 2 when
# retrying, 3 attempts allowed). Columns: a command about attempt 1 (for `retry`, the lost
# attempt), with the submission the jobs were made from. Cells: `[]` nothing to do, `404` not
# found, `409` conflict, otherwise the type of the one event decided.
DECIDE_TABLE = """
            sub  que  rej  dis  sta  pha  art  suc  fai  tim  can  cnf  los  ret  exp
new         sub  404  404  404  404  404  404  404  404  404  404  404  404  404  404
submitted   []   que  rej  409  409  409  409  409  409  409  crq  409  409  409  409
queued      []   []   409  dis  409  409  409  409  409  409  crq  409  409  409  409
dispatched  []   []   409  []   sta  pha  art  suc  fai  tim  crq  409  los  409  409
running     []   []   409  []   []   pha  art  suc  fai  tim  crq  409  los  409  409
lost        []   409  409  409  409  409  art  suc  fai  tim  crq  409  []   ret  409
retrying    []   que  409  409  409  409  409  409  409  409  crq  409  []   []   409
succeeded   []   409  409  409  409  409  art  []   409  409  409  409  409  409  exp
failed      []   409  409  409  409  409  art  409  []   409  409  409  409  409  exp
timed_out   []   409  409  409  409  409  art  409  409  []   409  409  409  409  exp
cancelled   []   409  409  409  409  409  art  409  409  409  []   []   409  409  exp
"""
COLUMNS = {
    "sub": "submit",
    "que": "queue",
    "rej": "reject",
    "dis": "dispatch",
    "sta": "start",
    "pha": "phase",
    "art": "artifact",
    "suc": "succeed",
    "fai": "fail",
    "tim": "timeout",
    "can": "cancel",
    "cnf": "confirm",
    "los": "lost",
    "ret": "retry",
    "exp": "expire",
}
EVENT_CELLS = {
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
    "los": "job.lost",
    "ret": "job.retried",
    "exp": "job.expired",
}
REFUSALS = {"404": "not_found", "409": "conflict"}


TABLE = parse_status_table(DECIDE_TABLE, COLUMNS)


def test_the_table_covers_every_status_and_command() -> None:
    assert set(TABLE) == set(itertools.product(JobStatus, COLUMNS.values()))


@pytest.mark.parametrize(("status", "kind"), sorted(TABLE))
def test_decide(status: JobStatus, kind: str) -> None:
    state = job_in(status)
    command = make_command(kind)
    cell = TABLE[status, kind]

    if cell in REFUSALS:
        with pytest.raises(JobTransitionError) as refused:
            decide(state, command)
        assert (refused.value.code, refused.value.status) == (REFUSALS[cell], status)
        return

    events = decide(state, command)

    if cell == "[]":
        assert events == []
        return
    [decided] = events
    assert decided.type == EVENT_CELLS[cell]
    assert (decided.id, decided.job_id, decided.actor) == (command.event_id, JOB_ID, command.actor)
    after = evolve(state, decided)
    assert after.ignored_event_count == state.ignored_event_count, "evolve must apply it"


def test_an_event_carries_the_command_envelope() -> None:
    correlation, causation = UUID(int=7), UUID(int=8)
    at = datetime(2025, 3, 14, 10, 0, tzinfo=UTC)
    command = make_command(
        "queue",
        event_id=UUID(int=9),
        occurred_at=at,
        correlation_id=correlation,
        causation_id=causation,
    )

    [queued] = decide(job_in(JobStatus.SUBMITTED), command)

    assert queued.model_dump(include={"id", "occurred_at", "correlation_id", "causation_id"}) == {
        "id": UUID(int=9),
        "occurred_at": at,
        "correlation_id": correlation,
        "causation_id": causation,
    }


def test_submitting_a_different_job_under_an_existing_id_conflicts() -> None:
    other = SUBMISSION.model_copy(update={"spec_content": "# Something else\n"})

    with pytest.raises(JobTransitionError, match="different submission") as refused:
        decide(job_in(JobStatus.QUEUED), SubmitJob(actor="user:u_7f3k2m9q", submission=other))

    assert refused.value.code == "conflict"


def test_a_retry_is_queued_as_its_own_attempt() -> None:
    [queued] = decide(job_in(JobStatus.RETRYING), make_command("queue"))

    assert isinstance(queued, JobQueued)
    assert queued.data.attempt == 2


def test_dispatch_names_the_workload_after_job_and_attempt() -> None:
    [dispatched] = decide(job_in(JobStatus.QUEUED), make_command("dispatch"))

    assert isinstance(dispatched, JobDispatched)
    assert dispatched.data.workload_name == workload_name(JOB_ID, 1)
    assert dispatched.data.runner is RunnerBackend.LOCAL


@pytest.mark.parametrize(
    ("status", "kind"),
    [(JobStatus.SUBMITTED, "queue"), (JobStatus.RETRYING, "queue"), (JobStatus.QUEUED, "dispatch")],
)
def test_no_new_work_starts_once_cancel_is_requested(status: JobStatus, kind: str) -> None:
    with pytest.raises(JobTransitionError, match="cancel was requested"):
        decide(job_in(status, cancel_requested=True), make_command(kind))


def test_a_lost_job_is_not_retried_once_cancel_is_requested() -> None:
    with pytest.raises(JobTransitionError, match="cancel was requested"):
        decide(job_in(JobStatus.LOST, cancel_requested=True), make_command("retry"))


def test_a_second_cancel_request_has_nothing_to_do() -> None:
    assert decide(job_in(JobStatus.RUNNING, cancel_requested=True), make_command("cancel")) == []


@pytest.mark.parametrize(
    ("status", "attempt"), [(JobStatus.SUBMITTED, None), (JobStatus.RUNNING, 1)]
)
def test_a_requested_cancel_is_confirmed(status: JobStatus, attempt: int | None) -> None:
    [cancelled] = decide(job_in(status, cancel_requested=True), make_command("confirm"))

    assert isinstance(cancelled, JobCancelled)
    assert cancelled.data.attempt == attempt


def test_cancelling_a_finished_job_names_its_status() -> None:
    with pytest.raises(JobTransitionError) as refused:
        decide(job_in(JobStatus.SUCCEEDED), RequestCancel(actor="user:u_7f3k2m9q"))

    assert str(refused.value) == "a finished job cannot be cancelled (job is succeeded)"


def last_attempt(status: JobStatus) -> JobState:
    return job_in(status, attempt=MAX_ATTEMPTS, workload_name=workload_name(JOB_ID, MAX_ATTEMPTS))


def test_losing_the_last_attempt_fails_the_job_instead() -> None:
    state = last_attempt(JobStatus.RUNNING)

    [failed] = decide(state, make_command("lost", MAX_ATTEMPTS, reason="node drained"))

    assert isinstance(failed, JobFailed)
    assert failed.data.error_code == "workload_lost"
    assert failed.data.error_message == "the workload of attempt 3 of 3 was lost: node drained"
    after = evolve(state, failed)
    assert after.status is JobStatus.FAILED
    assert decide(after, make_command("lost", MAX_ATTEMPTS)) == []
    assert decide(after, make_command("retry", MAX_ATTEMPTS)) == []


def test_retrying_the_last_attempt_fails_the_job_instead() -> None:
    state = last_attempt(JobStatus.LOST)

    [failed] = decide(state, make_command("retry", MAX_ATTEMPTS))

    assert isinstance(failed, JobFailed)
    assert failed.data.error_message == "the workload of attempt 3 of 3 was lost: node drained"
    assert evolve(state, failed).status is JobStatus.FAILED


def test_a_retry_takes_the_next_attempt() -> None:
    [retried] = decide(job_in(JobStatus.LOST), make_command("retry"))

    assert isinstance(retried, JobRetried)
    assert retried.data.attempt == 2


def test_losing_an_attempt_already_retried_has_nothing_to_do() -> None:
    assert decide(job_in(JobStatus.RUNNING, attempt=2), make_command("lost", 1)) == []


@pytest.mark.parametrize("kind", ["start", "phase", "artifact", "succeed", "fail", "timeout"])
def test_an_observation_of_an_earlier_attempt_conflicts(kind: str) -> None:
    state = job_in(JobStatus.RUNNING, attempt=2, workload_name=workload_name(JOB_ID, 2))

    with pytest.raises(JobTransitionError, match="attempt 1 is not the current attempt 2"):
        decide(state, make_command(kind, 1))


def test_reporting_the_current_phase_again_has_nothing_to_do() -> None:
    state = job_in(JobStatus.RUNNING, phase=Phase.EXECUTING)

    assert decide(state, make_command("phase")) == []


def test_recording_the_same_artifact_again_has_nothing_to_do() -> None:
    state = job_in(JobStatus.SUCCEEDED)
    [stored] = decide(state, make_command("artifact"))

    assert decide(evolve(state, stored), make_command("artifact")) == []


def test_no_artifact_is_recorded_after_the_results_expired() -> None:
    expired = evolve(job_in(JobStatus.SUCCEEDED), make_event("job.expired"))

    with pytest.raises(JobTransitionError, match="expired"):
        decide(expired, make_command("artifact"))
    assert decide(expired, make_command("expire")) == []


def test_rejecting_a_rejected_job_has_nothing_to_do() -> None:
    rejected = evolve(job_in(JobStatus.SUBMITTED), make_event("job.rejected"))

    assert decide(rejected, make_command("reject")) == []


def test_a_command_names_a_user_or_a_service() -> None:
    with pytest.raises(ValidationError, match="actor"):
        RequestCancel(actor="somebody")
