"""Exactly-once effects over at-least-once delivery: a per-consumer record of processed events.

A handler claims the event id inside the same transaction as its effect. A
redelivered event finds its claim already committed and the handler skips the
effect, so a crash between commit and ack cannot apply anything twice.
"""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

from sqlalchemy import DateTime
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel, col


def _utc_now() -> datetime:
    return datetime.now(UTC)


class ProcessedEvent(SQLModel, table=True):
    __tablename__ = "processed_events"

    consumer: str = Field(primary_key=True, max_length=100)
    event_id: UUID = Field(primary_key=True)
    processed_at: datetime = Field(
        default_factory=_utc_now, sa_type=DateTime(timezone=True), nullable=False
    )


async def claim_event(session: AsyncSession, consumer: str, event_id: UUID) -> bool:
    """Record, in the session's transaction, that `consumer` handles `event_id`.

    Returns False when the claim was already committed: the effect happened before.
    """
    statement = (
        insert(ProcessedEvent)
        .values(consumer=consumer, event_id=event_id, processed_at=_utc_now())
        .on_conflict_do_nothing()
        .returning(col(ProcessedEvent.event_id))
    )
    result = await session.execute(statement)
    return result.first() is not None
