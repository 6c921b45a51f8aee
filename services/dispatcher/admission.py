"""Which queued jobs may start now: per-user concurrency limits, a global capacity, fairness.

The dispatcher keeps one row per job that waits or runs (`admissions`): it is the
dispatcher's own state, not a projection, so admission never waits on another
service's read model. `choose_admissions` is the pure rule over those rows: each
user's jobs start in the order they were queued (FIFO), and free places go round
the users in turn, so one user's hundred queued jobs do not hold back another's one.
A job being dispatched has a lease (`dispatch_leases`) held by the replica making
its workload; another replica finishes the dispatch only once the lease ran out.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from uuid import UUID

from sqlalchemy import DateTime
from sqlmodel import Field, SQLModel


class AdmissionState(StrEnum):
    QUEUED = "queued"
    """Waiting for a place."""
    DISPATCHING = "dispatching"
    """Given a place; its workload is being created (a restart finishes the job)."""
    ACTIVE = "active"
    """Its workload exists; the place is taken until the job ends."""


class Admission(SQLModel, table=True):
    """A job that waits for, or holds, one of its owner's places."""

    __tablename__ = "admissions"

    job_id: UUID = Field(primary_key=True)
    user_id: UUID = Field(index=True)
    attempt: int = Field(ge=1)
    concurrency_limit: int = Field(ge=1, description="The owner's tier's running-jobs limit.")
    state: str = Field(max_length=20)
    queued_at: datetime = Field(sa_type=DateTime(timezone=True), nullable=False)
    workload_name: str | None = Field(default=None, max_length=100)


class DispatchLease(SQLModel, table=True):
    """A dispatcher's hold on a job it is making the workload of: the others leave it alone
    until `expires_at`, after which the dispatcher is taken to have died."""

    __tablename__ = "dispatch_leases"

    job_id: UUID = Field(primary_key=True)
    expires_at: datetime = Field(sa_type=DateTime(timezone=True), nullable=False)


@dataclass(frozen=True)
class Candidate:
    """What admission needs to know of a row."""

    job_id: UUID
    user_id: UUID
    state: AdmissionState
    queued_at: datetime
    concurrency_limit: int

    @classmethod
    def of(cls, row: Admission) -> Candidate:
        return cls(
            row.job_id,
            row.user_id,
            AdmissionState(row.state),
            row.queued_at.astimezone(UTC),
            row.concurrency_limit,
        )


def choose_admissions(candidates: Iterable[Candidate], capacity: int) -> list[UUID]:
    """The queued jobs to start now, in the order to start them.

    A user never holds more places than the limit of their tier; all users together
    never more than `capacity`. Places go round the users, the one whose oldest waiting
    job has waited longest first.
    """
    holding: dict[UUID, int] = defaultdict(int)
    waiting: dict[UUID, list[Candidate]] = defaultdict(list)
    for candidate in candidates:
        if candidate.state is AdmissionState.QUEUED:
            waiting[candidate.user_id].append(candidate)
        else:
            holding[candidate.user_id] += 1
    free = capacity - sum(holding.values())
    queues: list[Sequence[Candidate]] = sorted(
        (sorted(jobs, key=lambda job: (job.queued_at, job.job_id)) for jobs in waiting.values()),
        key=lambda jobs: (jobs[0].queued_at, jobs[0].job_id),
    )
    chosen: list[UUID] = []
    taken = dict.fromkeys(range(len(queues)), 0)
    while free > 0:
        chosen_this_round = 0
        for index, queue in enumerate(queues):
            if free == 0:
                break
            if taken[index] == len(queue):
                continue
            head = queue[taken[index]]
            if holding[head.user_id] >= head.concurrency_limit:
                continue
            chosen.append(head.job_id)
            holding[head.user_id] += 1
            taken[index] += 1
            free -= 1
            chosen_this_round += 1
        if chosen_this_round == 0:
            break
    return chosen
