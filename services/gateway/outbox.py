"""Outbox rows confirmed on JOBS: marked published, one at a time or many in one statement."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from uuid import UUID

from sqlalchemy import ARRAY, Uuid, any_, bindparam, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from ckrv.services.gateway.tables import OutboxEvent

logger = logging.getLogger(__name__)

_UUIDS = ARRAY(Uuid())


async def mark_published(sessions: async_sessionmaker[AsyncSession], event_ids: list[UUID]) -> None:
    """Record that JOBS confirmed these outbox events, in one statement."""
    async with sessions() as session, session.begin():
        await session.execute(
            update(OutboxEvent)
            .where(col(OutboxEvent.event_id) == any_(bindparam("ids", event_ids, type_=_UUIDS)))
            .values(published_at=datetime.now(UTC), attempts=OutboxEvent.attempts + 1)
        )


class PublishedMarks:
    """Marks confirmed outbox events as published, many in one statement every 50 ms.

    A submission hands its event id over once JetStream confirmed the event, and answers
    without waiting for the mark. Marks lost with the process cost nothing but a second
    append by the relay after its grace period, which the stream takes as a duplicate.
    """

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], *, interval_seconds: float = 0.05
    ) -> None:
        self._sessions = sessions
        self._interval = interval_seconds
        self._pending: list[UUID] = []
        self._arrived = asyncio.Event()

    def add(self, event_id: UUID) -> None:
        self._pending.append(event_id)
        self._arrived.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Mark what arrives until `stop` is set, then what is left."""
        stopping = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                arrived = asyncio.create_task(self._arrived.wait())
                await asyncio.wait({arrived, stopping}, return_when=asyncio.FIRST_COMPLETED)
                arrived.cancel()
                # Let a few more requests finish: one statement marks all of them.
                await asyncio.sleep(self._interval)
                await self.flush()
        finally:
            stopping.cancel()
            await self.flush()

    async def flush(self) -> None:
        self._arrived.clear()
        event_ids, self._pending = self._pending, []
        if not event_ids:
            return
        try:
            await mark_published(self._sessions, event_ids)
        except Exception:
            logger.exception(
                "could not mark published events; the outbox relay will append them again",
                extra={"events": len(event_ids)},
            )
