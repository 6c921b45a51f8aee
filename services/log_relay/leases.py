"""Which relay replica follows which job: a lease per job, and which replicas are alive.

Any number of relays may run over one runner. Each job's workloads are followed by
the one replica holding the job's lease (`log_relay_leases`), so its lines are published, its phases
recorded and its log archived by that replica alone. The lease is per job rather
than per workload because a job's attempts number their entries on from each other:
they are followed one after the other, by one replica.

A lease runs out `ttl` after it was taken or last renewed. Its holder renews it well
before then; one that could not (dead, paused, cut off from the database) loses it,
and another replica takes the job over from its saved position (`positions`). Renewing
is conditional on the lease not having run out, and so is saving a position, so a
replica that lost a lease can neither get it back unnoticed nor move the position of
a job another one follows. The holder also stops publishing once its own clock says
the lease may have run out: `Leases.holds` counts the time from before each renewal
was sent, so it ends no later than the lease in the database does.

Each replica announces itself (`log_relay_replicas`) as often as it renews; the
number of replicas alive sets each one's fair share of the jobs, so that the work
spreads over them rather than going to whichever saw it first.
"""

from __future__ import annotations

import math
import os
import secrets
import socket
import time
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from uuid import UUID

from sqlalchemy import DateTime, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import Field, SQLModel, col

REPLICA_NAME_LENGTH = 200


class RelayLease(SQLModel, table=True):
    __tablename__ = "log_relay_leases"

    job_id: UUID = Field(primary_key=True)
    owner: str = Field(
        max_length=REPLICA_NAME_LENGTH, index=True, description="The replica holding it."
    )
    expires_at: datetime = Field(sa_type=DateTime(timezone=True), nullable=False)


class RelayReplica(SQLModel, table=True):
    __tablename__ = "log_relay_replicas"

    name: str = Field(primary_key=True, max_length=REPLICA_NAME_LENGTH)
    expires_at: datetime = Field(sa_type=DateTime(timezone=True), nullable=False)


def new_replica_name() -> str:
    """A name no other replica has, that says where it runs: `<host>/<pid>/<random>`."""
    return f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"


def fair_share(jobs: int, replicas: int) -> int:
    """How many of `jobs` one of `replicas` replicas should follow at most."""
    return math.ceil(jobs / replicas)


def _expiry(ttl_seconds: float) -> ColumnElement[datetime]:
    # The database's clock, the one every replica's lease is checked against.
    return func.now() + timedelta(seconds=ttl_seconds)


def held_by(owner: str, job_id: UUID | Mapped[UUID]) -> ColumnElement[bool]:
    """Whether `owner` holds the lease of `job_id` now, the lease row locked until commit.

    The lock (FOR SHARE) makes a replica that takes the job over wait for the statement
    this guards to commit, so it then reads what that statement wrote.
    """
    return (
        select(col(RelayLease.job_id))
        .where(
            col(RelayLease.job_id) == job_id,
            col(RelayLease.owner) == owner,
            col(RelayLease.expires_at) > func.now(),
        )
        .with_for_update(read=True)
        .exists()
    )


async def announce(session: AsyncSession, name: str, ttl_seconds: float) -> None:
    """Record that the replica `name` is alive for `ttl_seconds` more; forget the dead ones."""
    expires_at = _expiry(ttl_seconds)
    await session.execute(
        insert(RelayReplica)
        .values(name=name, expires_at=expires_at)
        .on_conflict_do_update(index_elements=["name"], set_={"expires_at": expires_at})
    )
    await session.execute(delete(RelayReplica).where(col(RelayReplica.expires_at) <= func.now()))


async def replicas_alive(session: AsyncSession) -> int:
    alive = await session.scalar(
        select(func.count())
        .select_from(RelayReplica)
        .where(col(RelayReplica.expires_at) > func.now())
    )
    return alive or 0


async def leased(session: AsyncSession, job_ids: Collection[UUID]) -> set[UUID]:
    """Those of `job_ids` some replica holds the lease of now."""
    held = await session.scalars(
        select(col(RelayLease.job_id)).where(
            col(RelayLease.job_id).in_(job_ids), col(RelayLease.expires_at) > func.now()
        )
    )
    return set(held.all())


async def claim(
    session: AsyncSession, owner: str, job_ids: Collection[UUID], ttl_seconds: float
) -> set[UUID]:
    """Take the leases of those `job_ids` that nobody holds (or whose lease ran out)."""
    if not job_ids:
        return set()
    expires_at = _expiry(ttl_seconds)
    statement = insert(RelayLease).values(
        [{"job_id": job_id, "owner": owner, "expires_at": expires_at} for job_id in job_ids]
    )
    # The conflicting row is locked while its expiry is checked: one claimant wins.
    claimed = await session.scalars(
        statement.on_conflict_do_update(
            index_elements=["job_id"],
            set_={"owner": statement.excluded.owner, "expires_at": statement.excluded.expires_at},
            where=col(RelayLease.expires_at) <= func.now(),
        ).returning(col(RelayLease.job_id))
    )
    return set(claimed.all())


async def renew(session: AsyncSession, owner: str, ttl_seconds: float) -> set[UUID]:
    """Extend every lease `owner` still holds; the jobs they are of."""
    renewed = await session.scalars(
        update(RelayLease)
        .where(col(RelayLease.owner) == owner, col(RelayLease.expires_at) > func.now())
        .values(expires_at=_expiry(ttl_seconds))
        .returning(col(RelayLease.job_id))
    )
    return set(renewed.all())


async def release(session: AsyncSession, owner: str, job_ids: Collection[UUID] | None) -> None:
    """Give back `owner`'s leases of `job_ids` (all of them with None)."""
    statement = delete(RelayLease).where(col(RelayLease.owner) == owner)
    if job_ids is not None:
        statement = statement.where(col(RelayLease.job_id).in_(job_ids))
    await session.execute(statement)


async def retire(session: AsyncSession, name: str) -> None:
    """Give back every lease of the replica `name`, and say it is gone."""
    await release(session, name, None)
    await session.execute(delete(RelayReplica).where(col(RelayReplica.name) == name))


class Leases:
    """One replica's leases: taken, renewed and given back in the database, known here."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], ttl_seconds: float) -> None:
        self.name = new_replica_name()
        self.ttl_seconds = ttl_seconds
        self._sessions = sessions
        # Each job's lease surely holds until this `time.monotonic()`.
        self._until: dict[UUID, float] = {}

    @property
    def jobs(self) -> frozenset[UUID]:
        """The jobs this replica has leases of, as far as it knows."""
        return frozenset(self._until)

    def holds(self, job_id: UUID) -> bool:
        """Whether the job's lease is this replica's for certain, now."""
        return time.monotonic() < self._until.get(job_id, 0.0)

    async def announce(self) -> None:
        async with self._sessions() as session, session.begin():
            await announce(session, self.name, self.ttl_seconds)

    async def renew(self) -> set[UUID]:
        """Renew every lease; the jobs whose lease was lost."""
        until = time.monotonic() + self.ttl_seconds
        async with self._sessions() as session, session.begin():
            renewed = await renew(session, self.name, self.ttl_seconds)
        lost = set(self._until) - renewed
        self._until = dict.fromkeys(renewed, until)
        return lost

    async def claim(self, job_ids: Sequence[UUID], *, jobs: int) -> set[UUID]:
        """Take the leases of free jobs among `job_ids`, in order, while this replica has
        fewer than its fair share of the `jobs` there are; the jobs taken."""
        until = time.monotonic() + self.ttl_seconds
        async with self._sessions() as session, session.begin():
            # Itself included, even before it first announced itself.
            replicas = max(await replicas_alive(session), 1)
            room = fair_share(jobs, replicas) - len(self._until)
            if room <= 0:
                return set()
            taken = await leased(session, job_ids)
            free = [job_id for job_id in job_ids if job_id not in taken]
            claimed = await claim(session, self.name, free[:room], self.ttl_seconds)
        self._until.update(dict.fromkeys(claimed, until))
        return claimed

    async def release(self, job_ids: Collection[UUID]) -> None:
        if not job_ids:
            return
        for job_id in job_ids:
            self._until.pop(job_id, None)
        async with self._sessions() as session, session.begin():
            await release(session, self.name, job_ids)

    def let_go(self) -> None:
        """Hold no lease from now on, as far as `holds` tells (the database still has them)."""
        self._until.clear()

    async def retire(self) -> None:
        """Give back every lease at once: the other replicas take the jobs over right away."""
        self.let_go()
        async with self._sessions() as session, session.begin():
            await retire(session, self.name)
