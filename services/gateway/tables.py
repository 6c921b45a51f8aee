"""The gateway's tables: users, the jobs read model, outbox, idempotency keys, quota ledger."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from sqlalchemy import JSON, Column, DateTime, Index
from sqlmodel import Field, SQLModel


def utc_now() -> datetime:
    return datetime.now(UTC)


def timestamp_field(*, nullable: bool = False, index: bool = False) -> Any:
    if nullable:
        return Field(default=None, sa_type=DateTime(timezone=True), nullable=True, index=index)
    return Field(
        default_factory=utc_now, sa_type=DateTime(timezone=True), nullable=False, index=index
    )


class User(SQLModel, table=True):
    __tablename__ = "users"

    id: UUID = Field(primary_key=True)
    email: str = Field(unique=True, max_length=320)
    name: str | None = Field(default=None, max_length=200)
    subscription_tier: str = Field(max_length=20)
    created_at: datetime = timestamp_field()


class JobRecord(SQLModel, table=True):
    """One job as folded from its events: the read model behind GET /v1/jobs."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("jobs_by_owner", "user_id", "created_at", "id"),
        Index("jobs_by_owner_status", "user_id", "status", "created_at", "id"),
    )

    id: UUID = Field(primary_key=True)
    user_id: UUID = Field(index=False)
    status: str = Field(max_length=20, description="API status")
    phase: str | None = Field(default=None, max_length=20)
    attempt: int
    spec_id: str
    git_repo_url: str
    git_base_branch: str
    git_credential_name: str | None = None
    feature_branch_name: str
    created_at: datetime = timestamp_field()
    started_at: datetime | None = timestamp_field(nullable=True)
    completed_at: datetime | None = timestamp_field(nullable=True)
    result_status: str | None = Field(default=None, max_length=20)
    result_summary: str | None = None
    error_message: str | None = None
    metrics: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    cancel_requested: bool = False
    # Stream sequence of the newest event folded in; 0 while only the submission is known.
    last_sequence: int = 0
    # The folded `JobState`, from which the next events continue.
    state: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))


class OutboxEvent(SQLModel, table=True):
    """An event committed with its cause but not yet confirmed on JOBS."""

    __tablename__ = "outbox"

    event_id: UUID = Field(primary_key=True)
    job_id: UUID
    payload: str
    created_at: datetime = timestamp_field(index=True)
    published_at: datetime | None = timestamp_field(nullable=True)
    attempts: int = 0


class IdempotencyKey(SQLModel, table=True):
    __tablename__ = "idempotency_keys"

    user_id: UUID = Field(primary_key=True)
    key: str = Field(primary_key=True, max_length=255)
    request_hash: str = Field(max_length=64)
    job_id: UUID
    created_at: datetime = timestamp_field()


class QuotaCharge(SQLModel, table=True):
    """One job counted against its owner's quota: at most one row per job."""

    __tablename__ = "quota_charges"
    job_id: UUID = Field(primary_key=True)
    user_id: UUID = Field(index=True)
    cycle_start: datetime = timestamp_field()
    overage: bool = False
    amount_cents: int = 0
    charged_at: datetime = timestamp_field()
    refunded_at: datetime | None = timestamp_field(nullable=True)
