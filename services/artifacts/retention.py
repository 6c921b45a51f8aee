"""How long a finished job's results are kept, and the table of when each job's expire.

One row per finished job that ran a workload (`artifact_retention`), written when
its end is seen and deleted once its results are gone. Every attempt's objects
live under the job's own folder, `jobs/<job_id>/`, so a row needs no more than the
job and its expiry time.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID

from sqlalchemy import DateTime
from sqlmodel import Field, SQLModel

from ckrv.schemas.api import SubscriptionTier
from ckrv.services.artifacts.lifecycle import RESULTS_PREFIX
from ckrv.services.common.tiers import TIERS


class ResultRetention(SQLModel, table=True):
    __tablename__ = "artifact_retention"

    job_id: UUID = Field(primary_key=True)
    expires_at: datetime = Field(sa_type=DateTime(timezone=True), nullable=False, index=True)


def retention_period(tier: str, override_seconds: float | None = None) -> timedelta:
    """How long after its end a job of `tier` keeps its results and logs."""
    if override_seconds is not None:
        return timedelta(seconds=override_seconds)
    return timedelta(days=TIERS[SubscriptionTier(tier)].result_retention_days)


def job_results_prefix(job_id: UUID) -> str:
    """The folder holding every object of the job: each attempt's results and logs."""
    return f"{RESULTS_PREFIX}{job_id}/"
