"""Bodies of the `/v1` API, with the field names the open-source `ckrv` client reads."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field


class JobStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"


TERMINAL_JOB_STATUSES = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.TIMEOUT, JobStatus.CANCELLED}
)


class SubscriptionTier(enum.StrEnum):
    FREE = "free"
    PRO = "pro"
    ENTERPRISE = "enterprise"


class JobCreate(BaseModel):
    """A job to run: the spec's text, the repository and the branch to start from."""

    model_config = ConfigDict(extra="forbid")

    spec_content: str = Field(description="The full spec file (YAML, at most 256 KiB).")
    git_repo_url: str = Field(description="Repository to clone: https or ssh.")
    git_base_branch: str = Field(default="main", description="Branch the work starts from.")
    git_credential_name: str | None = Field(
        default=None, description="Name of a stored git credential, for private repositories."
    )


class JobPublic(BaseModel):
    """A job as its owner sees it."""

    id: UUID
    status: JobStatus
    phase: str | None = Field(
        description="Detail within the status: queued, dispatched, cloning, planning, "
        "executing, verifying, uploading."
    )
    attempt: int = Field(description="Current attempt; 0 until the job is queued.")
    spec_id: str
    git_repo_url: str
    git_base_branch: str
    git_credential_name: str | None
    feature_branch_name: str | None = Field(description="Branch holding the job's result.")
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    result_status: JobStatus | None = Field(
        description="succeeded, failed or timeout once the job ran to an end; else null."
    )
    result_summary: str | None
    error_message: str | None
    metrics: dict[str, int | float] | None
    elapsed_seconds: float | None = Field(description="Running time so far, or in total.")
    estimated_completion_at: datetime | None = Field(
        description="From the owner's recent successful jobs on the same repository."
    )
    cancel_requested: bool


class JobsPublic(BaseModel):
    jobs: list[JobPublic]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null at end.")


class JobEventPublic(BaseModel):
    """One entry of a job's audit trail."""

    sequence: int = Field(description="Position in the JOBS stream.")
    id: UUID
    type: str
    version: int
    occurred_at: datetime
    actor: str
    data: dict[str, Any]


class JobEventsPublic(BaseModel):
    events: list[JobEventPublic]


class UserPublic(BaseModel):
    id: UUID
    email: str
    name: str | None
    subscription_tier: SubscriptionTier
    job_quota_remaining: int
    billing_cycle_end: datetime


class UsagePublic(BaseModel):
    billing_cycle_start: datetime
    billing_cycle_end: datetime
    subscription_tier: SubscriptionTier
    jobs_this_cycle: int = Field(description="Jobs charged this cycle (refunds excluded).")
    jobs_included: int
    overage_jobs: int
    overage_amount_cents: int
    overage_amount: str = Field(description="The overage amount in dollars, e.g. `1.50`.")


class ErrorBody(BaseModel):
    """Every error: a stable machine-readable `error` code and a message for people."""

    model_config = ConfigDict(extra="allow")

    error: str
    message: str
