"""Appends job events to JOBS: deduplicated by event id, conditional on the job's last sequence.

Each append names the sequence of the job's last event the writer decided on
(`Nats-Expected-Last-Subject-Sequence` over `jobs.<job_id>.*`; 0 for a new
job). If another writer appended in between, the server refuses the append
and `ConcurrencyConflict` tells the caller to re-read and decide again.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from nats.js import JetStreamContext
from nats.js.errors import APIError

from ckrv.events.envelope import Event
from ckrv.events.subjects import JOBS_STREAM, job_subjects

# nats-server's error code for "wrong last sequence" on a conditional publish.
WRONG_LAST_SEQUENCE = 10071


class ConcurrencyConflict(Exception):
    """Another writer appended to the job after the sequence this append expected."""

    def __init__(self, job_id: UUID, expected_sequence: int, description: str) -> None:
        super().__init__(f"job {job_id} moved on since sequence {expected_sequence}: {description}")
        self.job_id = job_id
        self.expected_sequence = expected_sequence


@dataclass(frozen=True)
class AppendResult:
    """Where an event landed. `duplicate` is true when the stream already held this event id."""

    event_id: UUID
    sequence: int
    duplicate: bool


class EventPublisher:
    """Conditional, idempotent appends of job events."""

    def __init__(self, js: JetStreamContext, *, timeout: float = 5.0) -> None:
        self._js = js
        self._timeout = timeout

    async def append(self, event: Event, *, expected_sequence: int) -> AppendResult:
        """Append `event` if the job's last event is still at `expected_sequence`."""
        headers = {
            "Nats-Msg-Id": str(event.id),
            "Nats-Expected-Last-Subject-Sequence": str(expected_sequence),
            "Nats-Expected-Last-Subject-Sequence-Subject": job_subjects(event.job_id),
        }
        try:
            ack = await self._js.publish(
                event.subject,
                event.model_dump_json().encode(),
                timeout=self._timeout,
                stream=JOBS_STREAM,
                headers=headers,
            )
        except APIError as error:
            if error.err_code == WRONG_LAST_SEQUENCE:
                raise ConcurrencyConflict(
                    event.job_id, expected_sequence, error.description or ""
                ) from error
            raise
        return AppendResult(event_id=event.id, sequence=ack.seq, duplicate=bool(ack.duplicate))
