"""Subject names on the JOBS and LOGS streams, and the mapping from event type to subject token."""

from __future__ import annotations

from uuid import UUID

JOBS_STREAM = "JOBS"
LOGS_STREAM = "LOGS"
JOBS_SUBJECTS = "jobs.>"
LOGS_SUBJECTS = "logs.>"
EVENT_TYPE_PREFIX = "job."
DEAD_LETTER_PREFIX = "deadletter"


def job_event_subject(job_id: UUID, event_type: str) -> str:
    """`jobs.<job_id>.<event>`: the event token is the type without its `job.` prefix."""
    if not event_type.startswith(EVENT_TYPE_PREFIX):
        raise ValueError(f"event type {event_type!r} does not start with {EVENT_TYPE_PREFIX!r}")
    return f"jobs.{job_id}.{event_type.removeprefix(EVENT_TYPE_PREFIX)}"


def job_subjects(job_id: UUID) -> str:
    """Every event subject of one job: the filter for per-job reads and optimistic concurrency."""
    return f"jobs.{job_id}.*"


def job_log_subject(job_id: UUID) -> str:
    return f"logs.{job_id}"


def dead_letter_subject(consumer: str) -> str:
    """Where a consumer parks messages it can never handle, with the reason in headers."""
    return f"{DEAD_LETTER_PREFIX}.{consumer}"
