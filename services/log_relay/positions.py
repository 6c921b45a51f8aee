"""Where the relay stands with each workload's output: one row per workload (`log_relay_positions`).

A row holds the byte offset up to which the output is published, the `seq` the
next entry gets and the redactor's memory, saved only after JetStream acknowledged
the entries before it; and whether the attempt's log is archived. A restarted relay,
or the replica that takes the job over from one that died, resumes from the row: what
it publishes again between the saved position and the crash carries the same
`Nats-Msg-Id`s, and JetStream drops it. Only the replica holding the job's lease
(`leases`) writes a row, and the lease is checked in the statement that does. Once the log is
archived and the workload gone, the row goes too: a later attempt of the job finds
where to number on from in the LOGS stream itself.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

from sqlalchemy import BigInteger, DateTime, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel, col

from ckrv.services.log_relay.leases import RelayLease, held_by


def _utc_now() -> datetime:
    return datetime.now(UTC)


class RelayPosition(SQLModel, table=True):
    __tablename__ = "log_relay_positions"

    workload_name: str = Field(primary_key=True, max_length=100)
    job_id: UUID
    attempt: int = Field(ge=1)
    output_offset: int = Field(
        sa_type=BigInteger, description="Bytes of output published (whole lines only)."
    )
    next_seq: int = Field(sa_type=BigInteger, description="The `seq` of the next entry.")
    inside_private_key: bool = Field(
        default=False, description="Whether the output published so far ends in a private key."
    )
    archived_at: datetime | None = Field(
        default=None, sa_type=DateTime(timezone=True), nullable=True
    )
    updated_at: datetime = Field(
        default_factory=_utc_now, sa_type=DateTime(timezone=True), nullable=False
    )


@dataclass(frozen=True)
class ResumePoint:
    """Where to go on with a workload's output."""

    offset: int
    next_seq: int
    inside_private_key: bool
    archived: bool


def _resume_point(row: RelayPosition) -> ResumePoint:
    return ResumePoint(
        row.output_offset, row.next_seq, row.inside_private_key, row.archived_at is not None
    )


async def find_position(session: AsyncSession, workload_name: str) -> ResumePoint | None:
    row = await session.get(RelayPosition, workload_name)
    return None if row is None else _resume_point(row)


async def start_position(
    session: AsyncSession,
    workload_name: str,
    job_id: UUID,
    attempt: int,
    first_seq: int,
    *,
    owner: str,
) -> ResumePoint | None:
    """The workload's row, made at the start of its output if it has none yet.

    None if the relay `owner` does not hold the job's lease (any more).
    """
    if not await session.scalar(select(held_by(owner, job_id))):
        return None
    await session.execute(
        insert(RelayPosition)
        .values(
            workload_name=workload_name,
            job_id=job_id,
            attempt=attempt,
            output_offset=0,
            next_seq=first_seq,
            inside_private_key=False,
            updated_at=_utc_now(),
        )
        .on_conflict_do_nothing()
    )
    row = await session.get(RelayPosition, workload_name)
    assert row is not None
    return _resume_point(row)


async def save_progress(
    session: AsyncSession,
    workload_name: str,
    *,
    owner: str,
    offset: int,
    next_seq: int,
    inside_private_key: bool,
) -> bool:
    """Record that the output up to `offset` is published, as entries up to `next_seq - 1`.

    False, and nothing written, if the relay `owner` does not hold the job's lease (any more).
    """
    return await _update_held(
        session,
        workload_name,
        owner,
        output_offset=offset,
        next_seq=next_seq,
        inside_private_key=inside_private_key,
        updated_at=_utc_now(),
    )


async def mark_archived(session: AsyncSession, workload_name: str, *, owner: str) -> bool:
    """Record that the attempt's log is archived; False, as `save_progress`, without the lease."""
    now = _utc_now()
    return await _update_held(session, workload_name, owner, archived_at=now, updated_at=now)


async def _update_held(
    session: AsyncSession, workload_name: str, owner: str, **values: object
) -> bool:
    updated = await session.scalar(
        update(RelayPosition)
        .where(
            col(RelayPosition.workload_name) == workload_name,
            held_by(owner, col(RelayPosition.job_id)),
        )
        .values(**values)
        .returning(col(RelayPosition.workload_name))
    )
    return updated is not None


async def list_positions(session: AsyncSession) -> list[RelayPosition]:
    return list((await session.scalars(select(RelayPosition))).all())


async def unfollowed_positions(session: AsyncSession, owner: str) -> list[RelayPosition]:
    """Rows not archived yet of jobs no other relay holds the lease of.

    Among them are those of workloads gone before their log was archived, which no
    runner reports any more, found here so that some relay still archives them.
    """
    followed_by_another = (
        select(col(RelayLease.job_id))
        .where(
            col(RelayLease.job_id) == col(RelayPosition.job_id),
            col(RelayLease.owner) != owner,
            col(RelayLease.expires_at) > func.now(),
        )
        .exists()
    )
    return list(
        (
            await session.scalars(
                select(RelayPosition).where(
                    col(RelayPosition.archived_at).is_(None), ~followed_by_another
                )
            )
        ).all()
    )


async def forget_positions(session: AsyncSession, workload_names: Collection[str]) -> None:
    """Drop the rows of workloads that are archived and gone: nothing will ask for them again."""
    await session.execute(
        delete(RelayPosition).where(col(RelayPosition.workload_name).in_(workload_names))
    )
