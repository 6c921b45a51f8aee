"""Leases of jobs in PostgreSQL: one holder at a time, lost once run out, checked when saving."""

from __future__ import annotations

from collections.abc import AsyncIterator
from uuid import UUID, uuid4

import pytest
from sqlalchemy import func, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from ckrv.services.common.db import create_engine, session_factory
from ckrv.services.common.settings import CommonSettings
from ckrv.services.log_relay import positions
from ckrv.services.log_relay.leases import Leases, RelayLease
from tests.integration.log_relay.conftest import wait_until

pytestmark = pytest.mark.integration

LONG_TTL_SECONDS = 120.0
SHORT_TTL_SECONDS = 0.2


@pytest.fixture
async def sessions(common: CommonSettings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(common.database_url.get_secret_value())
    yield session_factory(engine)
    await engine.dispose()


async def retired(*replicas: Leases) -> None:
    for replica in replicas:
        await replica.retire()


async def save(
    sessions: async_sessionmaker[AsyncSession], job_id: UUID, *, owner: str, offset: int
) -> bool:
    async with sessions() as session, session.begin():
        return await positions.save_progress(
            session,
            f"ckrv-job-{job_id}-1",
            owner=owner,
            offset=offset,
            next_seq=offset + 1,
            inside_private_key=False,
        )


async def test_a_job_is_leased_to_one_replica_until_it_gives_it_back(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    first, second = Leases(sessions, LONG_TTL_SECONDS), Leases(sessions, LONG_TTL_SECONDS)
    job_id = uuid4()
    try:
        assert await first.claim([job_id], jobs=1) == {job_id}
        assert first.holds(job_id)
        assert await second.claim([job_id], jobs=1) == set()
        assert not second.holds(job_id)

        await first.release([job_id])
        assert not first.holds(job_id)
        assert await second.claim([job_id], jobs=1) == {job_id}
        assert await first.renew() == set()
        assert first.jobs == frozenset()
    finally:
        await retired(first, second)


async def test_a_lease_that_ran_out_is_taken_over_and_its_old_holder_saves_nothing_more(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    slow, other = Leases(sessions, LONG_TTL_SECONDS), Leases(sessions, LONG_TTL_SECONDS)
    job_id = uuid4()
    try:
        assert await slow.claim([job_id], jobs=1) == {job_id}
        async with sessions() as session, session.begin():
            point = await positions.start_position(
                session, f"ckrv-job-{job_id}-1", job_id, 1, 1, owner=slow.name
            )
        assert point is not None
        # As if the slow replica had not renewed it in time.
        async with sessions() as session, session.begin():
            await session.execute(
                update(RelayLease)
                .where(col(RelayLease.job_id) == job_id)
                .values(expires_at=func.now())
            )

        assert await other.claim([job_id], jobs=1) == {job_id}
        assert not await save(sessions, job_id, owner=slow.name, offset=100)
        assert await save(sessions, job_id, owner=other.name, offset=50)
        async with sessions() as session:
            saved = await positions.find_position(session, f"ckrv-job-{job_id}-1")
        assert saved is not None
        assert saved.offset == 50
        assert await slow.renew() == {job_id}, "renewing tells it the lease is lost"
        assert not slow.holds(job_id)
    finally:
        await retired(slow, other)


async def test_a_replica_s_own_clock_ends_its_lease(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    leases = Leases(sessions, SHORT_TTL_SECONDS)
    job_id = uuid4()
    try:
        assert await leases.claim([job_id], jobs=1) == {job_id}

        async def ran_out() -> bool:
            return not leases.holds(job_id)

        await wait_until(ran_out, "the lease run out by the replica's clock")
        assert leases.jobs == {job_id}, "not given back: renewing tells whether it still holds"
    finally:
        await leases.retire()


async def test_each_replica_claims_at_most_its_fair_share_and_leaves_the_rest(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    first, second = Leases(sessions, LONG_TTL_SECONDS), Leases(sessions, LONG_TTL_SECONDS)
    jobs = [uuid4() for _ in range(5)]
    try:
        await first.announce()
        await second.announce()
        taken_first = await first.claim(jobs, jobs=len(jobs))
        assert len(taken_first) == 3
        # The first replica's jobs come first: the second passes them by to the free ones.
        taken_second = await second.claim(jobs, jobs=len(jobs))
        assert taken_second == set(jobs) - taken_first

        await first.retire()
        assert await second.claim(jobs, jobs=len(jobs)) == taken_first, "alone, it takes all"
    finally:
        await retired(first, second)
