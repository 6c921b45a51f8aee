"""Stored git credentials by owner and name; their values are encrypted at rest."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

from sqlalchemy import DateTime, UniqueConstraint, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel, col


def _utc_now() -> datetime:
    return datetime.now(UTC)


class GitCredential(SQLModel, table=True):
    __tablename__ = "git_credentials"
    __table_args__ = (UniqueConstraint("user_id", "name"),)

    id: UUID = Field(primary_key=True)
    user_id: UUID = Field(index=True)
    name: str = Field(max_length=50)
    provider: str = Field(max_length=20)
    credential_type: str = Field(max_length=20)
    key_id: str = Field(max_length=50, description="Which encryption key sealed the value.")
    ciphertext: bytes
    created_at: datetime = Field(
        default_factory=_utc_now, sa_type=DateTime(timezone=True), nullable=False
    )
    last_used_at: datetime | None = Field(
        default=None, sa_type=DateTime(timezone=True), nullable=True
    )


async def credential_exists(session: AsyncSession, user_id: UUID, name: str) -> bool:
    found = await session.scalar(
        select(col(GitCredential.id)).where(
            col(GitCredential.user_id) == user_id, col(GitCredential.name) == name
        )
    )
    return found is not None
