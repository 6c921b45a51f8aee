"""A webhook's body: the job as the API shows it just after the event, the same on every read."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

from ckrv.events.catalog import JobEvent, JobSubmittedData, JobSucceededData, RunnerBackend
from ckrv.events.history import StoredEvent
from ckrv.events.state import (
    DispatchJob,
    JobCommand,
    QueueJob,
    StartJob,
    SubmitJob,
    SucceedJob,
    decide,
    evolve,
    initial_state,
)
from ckrv.schemas.api import JobPublic
from ckrv.schemas.webhooks import WebhookPayload
from ckrv.services.notifier.messages import job_event_message, ping_message

OWNER = uuid4()
SUBMITTED_AT = datetime(2025, 6, 1, 9, 0, tzinfo=UTC)
ACTOR = "service:tests"


def history_of(job_id: UUID) -> list[StoredEvent]:
    """A job from submission to success, at stream sequences 11, 13, 15, ... (others between)."""
    submission = JobSubmittedData(
        user_id=str(OWNER),
        tier="pro",
        spec_id="add-login",
        spec_content="id: add-login\n",
        git_repo_url="https://github.com/acme/app.git",
        git_base_branch="main",
        git_credential_name=None,
        time_limit_seconds=3600,
        max_attempts=3,
    )
    at = SUBMITTED_AT
    commands: list[JobCommand] = [
        SubmitJob(actor="user:tests", submission=submission, occurred_at=at),
        QueueJob(actor=ACTOR, occurred_at=at + timedelta(seconds=1)),
        DispatchJob(actor=ACTOR, runner=RunnerBackend.LOCAL, occurred_at=at + timedelta(seconds=2)),
        StartJob(actor=ACTOR, attempt=1, occurred_at=at + timedelta(seconds=3)),
        SucceedJob(
            actor=ACTOR,
            result=JobSucceededData(attempt=1, summary="Added a login page."),
            occurred_at=at + timedelta(minutes=7),
        ),
    ]
    state = initial_state(job_id)
    events: list[JobEvent] = []
    for command in commands:
        decided = decide(state, command)
        for event in decided:
            state = evolve(state, event)
        events.extend(decided)
    return [StoredEvent(11 + 2 * index, event) for index, event in enumerate(events)]


def data_of(body: str) -> JobPublic:
    return JobPublic.model_validate(WebhookPayload.model_validate_json(body).data)


def test_a_terminal_event_carries_the_finished_job() -> None:
    job_id = uuid4()
    history = history_of(job_id)
    succeeded = history[-1]

    made = job_event_message(succeeded.event, succeeded.sequence, history)

    assert made is not None
    assert made.owner == OWNER
    assert (made.message.id, made.message.event_type) == (succeeded.event.id, "job.succeeded")
    payload = json.loads(made.message.body)
    assert set(payload) == {"type", "timestamp", "data"}
    assert payload["type"] == "job.succeeded"
    assert payload["timestamp"] == "2025-06-01T09:07:00Z"
    job = data_of(made.message.body)
    assert (job.id, job.status, job.result_summary) == (job_id, "succeeded", "Added a login page.")
    assert job.completed_at == succeeded.event.occurred_at
    assert job.elapsed_seconds == 7 * 60 - 3


def test_the_job_is_shown_as_it_was_just_after_the_event() -> None:
    history = history_of(uuid4())
    started = history[3]
    assert started.event.type == "job.started"

    made = job_event_message(started.event, started.sequence, history)

    assert made is not None
    job = data_of(made.message.body)
    assert (job.status, job.completed_at, job.result_summary) == ("running", None, None)
    # Measured to the event, not to the time of reading: every read gives the same body,
    # whatever happened to the job since.
    assert job.elapsed_seconds == 0
    again = job_event_message(started.event, started.sequence, history[:4])
    assert again is not None
    assert again.message.body == made.message.body


def test_a_job_without_its_submission_has_nobody_to_tell() -> None:
    history = history_of(uuid4())[1:]
    assert job_event_message(history[-1].event, history[-1].sequence, history) is None


def test_a_ping_is_a_message_of_its_own() -> None:
    endpoint_id = uuid4()
    now = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    first, second = ping_message(endpoint_id, now), ping_message(endpoint_id, now)
    assert first.id != second.id
    assert first.event_type == "webhook.ping"
    assert json.loads(first.body) == {
        "type": "webhook.ping",
        "timestamp": "2025-06-01T12:00:00Z",
        "data": {"webhook_id": str(endpoint_id)},
    }
