"""Runs decide-append cycles on one job's history with optimistic concurrency.

`execute` loads the job, asks a decision function for events and appends them
conditional on the sequence it read; when another writer got there first it
re-reads and decides again, so the loser usually finds nothing left to do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from uuid import UUID

from nats.aio.client import Client

from ckrv.events.envelope import Event
from ckrv.events.history import StoredEvent, read_job_history
from ckrv.events.publisher import AppendResult, ConcurrencyConflict, EventPublisher
from ckrv.events.state import JobState, evolve, initial_state


class DecisionKeptConflicting(Exception):
    """Every attempt to append a decision lost to another writer."""


@dataclass(frozen=True)
class LoadedJob:
    """A job's state as of `last_sequence`, the sequence the next append must expect."""

    state: JobState
    last_sequence: int
    events: tuple[StoredEvent, ...]


class JobEventStore:
    """The JOBS stream seen as one event history per job."""

    def __init__(self, nc: Client, *, batch_size: int = 256, timeout: float = 5.0) -> None:
        self._nc = nc
        self._publisher = EventPublisher(nc, timeout=timeout)
        self._batch_size = batch_size
        self._timeout = timeout

    async def read(self, job_id: UUID, *, after_sequence: int = 0) -> list[StoredEvent]:
        return await read_job_history(
            self._nc,
            job_id,
            after_sequence=after_sequence,
            batch_size=self._batch_size,
            reply_timeout=self._timeout,
        )

    async def load(self, job_id: UUID) -> LoadedJob:
        history = await self.read(job_id)
        state = initial_state(job_id)
        for stored in history:
            state = evolve(state, stored.event)
        return LoadedJob(
            state=state,
            last_sequence=history[-1].sequence if history else 0,
            events=tuple(history),
        )

    async def append(self, event: Event, *, expected_sequence: int) -> AppendResult:
        return await self._publisher.append(event, expected_sequence=expected_sequence)

    async def execute(
        self,
        job_id: UUID,
        decide: Callable[[JobState], Sequence[Event]],
        *,
        max_attempts: int = 5,
    ) -> list[AppendResult]:
        """Load, decide, append; on a lost race load and decide again."""
        for _ in range(max_attempts):
            loaded = await self.load(job_id)
            expected = loaded.last_sequence
            results: list[AppendResult] = []
            try:
                for event in decide(loaded.state):
                    result = await self.append(event, expected_sequence=expected)
                    results.append(result)
                    expected = result.sequence
            except ConcurrencyConflict:
                continue
            return results
        raise DecisionKeptConflicting(
            f"job {job_id}: another writer won {max_attempts} times in a row"
        )
