"""A redelivered event finds its claim committed and its effect is not applied twice."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from uuid import uuid4

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from ckrv.services.common.db import create_engine, create_schema, session_factory
from ckrv.services.common.inbox import claim_event

pytestmark = pytest.mark.integration


@pytest.fixture
async def engine(postgres_server: Any) -> AsyncIterator[AsyncEngine]:
    await create_schema(postgres_server.dsn)
    engine = create_engine(postgres_server.dsn)
    async with engine.begin() as connection:
        await connection.execute(
            text("create table if not exists inbox_test_effects (event_id uuid, note text)")
        )
    yield engine
    await engine.dispose()


async def apply_once(engine: AsyncEngine, consumer: str, event_id: Any) -> bool:
    async with session_factory(engine)() as session, session.begin():
        if not await claim_event(session, consumer, event_id):
            return False
        await session.execute(
            text("insert into inbox_test_effects values (:id, 'applied')"), {"id": event_id}
        )
        return True


async def test_the_second_delivery_of_an_event_applies_nothing(engine: AsyncEngine) -> None:
    event_id = uuid4()
    assert await apply_once(engine, "notifier", event_id)
    assert not await apply_once(engine, "notifier", event_id)
    # Another consumer handles the same event independently.
    assert await apply_once(engine, "dispatcher", event_id)
    async with engine.connect() as connection:
        count = await connection.scalar(
            text("select count(*) from inbox_test_effects where event_id = :id"), {"id": event_id}
        )
    assert count == 2


async def test_a_rolled_back_effect_releases_its_claim(engine: AsyncEngine) -> None:
    event_id = uuid4()

    async def claim_then_crash() -> None:
        async with session_factory(engine)() as session, session.begin():
            assert await claim_event(session, "notifier", event_id)
            raise RuntimeError("crash before commit")

    with pytest.raises(RuntimeError, match="crash before commit"):
        await claim_then_crash()
    assert await apply_once(engine, "notifier", event_id)


async def test_creating_the_schema_twice_keeps_existing_rows(
    engine: AsyncEngine, postgres_server: Any
) -> None:
    event_id = uuid4()
    assert await apply_once(engine, "watcher", event_id)
    await create_schema(postgres_server.dsn)
    assert not await apply_once(engine, "watcher", event_id)
