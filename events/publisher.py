"""Appends job events to JOBS: deduplicated by event id, conditional on the job's last sequence.

Each append names the sequence of the job's last event the writer decided on
(`Nats-Expected-Last-Subject-Sequence` over `jobs.<job_id>.*`; 0 for a new
job). If another writer appended in between, the server refuses the append
and `ConcurrencyConflict` tells the caller to re-read and decide again.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from nats.aio.client import Client
from nats.js.errors import APIError

from ckrv.events.envelope import Event
from ckrv.events.history import read_job_history
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

    def __init__(self, nc: Client, *, timeout: float = 5.0) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._timeout = timeout

    async def append(self, event: Event, *, expected_sequence: int) -> AppendResult:
        """Append `event` if the job's last event is still at `expected_sequence`.

        Appending an event the job's history already holds returns where it landed
        (`duplicate`), even when the job has moved on since: the server checks the
        expected sequence before its dedupe window, so a retried append whose first
        answer was lost meets a conflict, and the history tells it apart from a lost race.
        """
        try:
            return await self._publish(event, expected_sequence)
        except ConcurrencyConflict:
            later = await read_job_history(self._nc, event.job_id, after_sequence=expected_sequence)
            for stored in later:
                if stored.event.id == event.id:
                    return AppendResult(event.id, stored.sequence, duplicate=True)
            raise

    async def _publish(self, event: Event, expected_sequence: int) -> AppendResult:
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
