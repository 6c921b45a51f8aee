"""Confirmed outbox events are marked published in batches, and what is left when stopping."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from uuid import UUID, uuid4

import pytest
from sqlalchemy import select
from sqlmodel import col

from ckrv.services.common.db import create_engine, create_schema, session_factory
from ckrv.services.gateway.outbox import PublishedMarks
from ckrv.services.gateway.tables import OutboxEvent
from ckrv.services.stack.postgres_server import PostgresServer

pytestmark = pytest.mark.integration


async def test_marks_are_written_together_and_none_is_lost_on_stop(
    postgres_server: PostgresServer,
) -> None:
    await create_schema(postgres_server.dsn)
    engine = create_engine(postgres_server.dsn)
    try:
        sessions = session_factory(engine)
        event_ids = [uuid4() for _ in range(5)]
        async with sessions() as session, session.begin():
            session.add_all(
                OutboxEvent(event_id=event_id, job_id=uuid4(), payload="{}")
                for event_id in event_ids
            )

        async def marked() -> dict[UUID, tuple[datetime | None, int]]:
            async with sessions() as session:
                rows = await session.scalars(
                    select(OutboxEvent).where(col(OutboxEvent.event_id).in_(event_ids))
                )
                return {row.event_id: (row.published_at, row.attempts) for row in rows}

        marks = PublishedMarks(sessions, interval_seconds=0.2)
        stop = asyncio.Event()
        running = asyncio.create_task(marks.run(stop))
        started = datetime.now(UTC)
        for event_id in event_ids[:3]:
            marks.add(event_id)
        await asyncio.sleep(0.05)
        # Still gathering: nothing written yet.
        assert all(published is None for published, _ in (await marked()).values())
        await asyncio.sleep(0.4)
        first = await marked()
        assert all(first[event_id][0] is not None for event_id in event_ids[:3])
        assert {first[event_id][1] for event_id in event_ids[:3]} == {1}
        # One statement: the three carry the same time.
        assert len({first[event_id][0] for event_id in event_ids[:3]}) == 1
        assert all(first[event_id] == (None, 0) for event_id in event_ids[3:])

        for event_id in event_ids[3:]:
            marks.add(event_id)
        stop.set()
        await asyncio.wait_for(running, 5)
        last = await marked()
        assert all(published is not None and published >= started for published, _ in last.values())
    finally:
        await engine.dispose()
