"""The failed-attempt throttle against PostgreSQL: blocking, windows that run out, pruning.

Each test uses a throttle of its own name, so its keys are apart from every other's.
"""

from __future__ import annotations

from datetime import timedelta
from uuid import uuid4

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlmodel import col

from ckrv.services.common.db import create_schema, session_factory
from ckrv.services.gateway.identity.throttle import FailedAttempts, Limit, Throttle
from ckrv.services.stack.postgres_server import PostgresServer

pytestmark = pytest.mark.integration

WINDOW_SECONDS = 600


@pytest.fixture
async def sessions(
    postgres_server: PostgresServer, database: AsyncEngine
) -> async_sessionmaker[AsyncSession]:
    await create_schema(postgres_server.dsn)
    return session_factory(database)


def new_throttle() -> Throttle:
    return Throttle(
        f"test-{uuid4().hex[:8]}",
        {
            "address": Limit(failures=3, window_seconds=WINDOW_SECONDS),
            "code": Limit(failures=2, window_seconds=WINDOW_SECONDS),
        },
    )


async def _run_out(sessions: async_sessionmaker[AsyncSession], throttle: Throttle) -> None:
    """Move every window of `throttle` to the past, as if its time had gone by."""
    async with sessions() as session, session.begin():
        await session.execute(
            update(FailedAttempts)
            .where(col(FailedAttempts.key).startswith(f"{throttle.name}."))
            .values(expires_at=func.now() - timedelta(seconds=1))
        )


async def _rows(sessions: async_sessionmaker[AsyncSession], throttle: Throttle) -> list[int]:
    async with sessions() as session:
        counts = await session.scalars(
            select(col(FailedAttempts.failures)).where(
                col(FailedAttempts.key).startswith(f"{throttle.name}.")
            )
        )
        return sorted(counts.all())


async def test_a_key_is_blocked_at_its_limit_and_any_blocked_key_blocks(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    throttle = new_throttle()
    for address in ("a", "b"):
        assert await throttle.retry_after(sessions, address=address, code="X") == 0
        await throttle.record_failure(sessions, address=address, code="X")

    # Code X has its 2 failures; addresses a and b have 1 each of their 3.
    assert 0 < await throttle.retry_after(sessions, address="c", code="X") <= WINDOW_SECONDS
    assert await throttle.retry_after(sessions, address="a", code="Y") == 0
    for code in ("Y", "Z"):
        await throttle.record_failure(sessions, address="a", code=code)
    assert 0 < await throttle.retry_after(sessions, address="a", code="W") <= WINDOW_SECONDS
    assert await throttle.retry_after(sessions, address="b", code="W") == 0
    # Values are stored hashed, never as typed.
    async with sessions() as session:
        keys = (await session.scalars(select(col(FailedAttempts.key)))).all()
    assert not [key for key in keys if key.startswith(throttle.name) and key.endswith(":X")]


async def test_a_window_that_ran_out_counts_afresh_and_its_row_is_pruned(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    throttle = new_throttle()
    for _ in range(2):
        await throttle.record_failure(sessions, code="X")
    await throttle.record_failure(sessions, code="Y")
    assert await throttle.retry_after(sessions, code="X") > 0

    await _run_out(sessions, throttle)
    assert await throttle.retry_after(sessions, code="X") == 0
    await throttle.record_failure(sessions, code="X")

    # X counts from 1 again in a new window; Y's run-out row was deleted.
    assert await _rows(sessions, throttle) == [1]
    assert await throttle.retry_after(sessions, code="X") == 0


async def test_clearing_a_key_forgets_its_failures_only(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    throttle = new_throttle()
    for _ in range(2):
        await throttle.record_failure(sessions, address="a", code="X")

    await throttle.clear(sessions, "code", "X")

    assert await throttle.retry_after(sessions, code="X") == 0
    assert await _rows(sessions, throttle) == [2]
