"""Subscription tiers: monthly job quota, overage price, concurrency and time limits."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from ckrv.schemas.api import SubscriptionTier


@dataclass(frozen=True)
class TierLimits:
    included_jobs: int
    # None: no jobs beyond the included ones.
    overage_cents_per_job: int | None
    concurrent_jobs: int
    # Jobs accepted but not finished; beyond it a submission answers `concurrency_limited`.
    unfinished_jobs: int
    time_limit_seconds: int
    max_attempts: int
    # Days a finished job's results and logs are kept after its end.
    result_retention_days: int


TIERS: dict[SubscriptionTier, TierLimits] = {
    SubscriptionTier.FREE: TierLimits(
        included_jobs=10,
        overage_cents_per_job=None,
        concurrent_jobs=1,
        unfinished_jobs=10,
        time_limit_seconds=30 * 60,
        max_attempts=2,
        result_retention_days=7,
    ),
    SubscriptionTier.PRO: TierLimits(
        included_jobs=100,
        overage_cents_per_job=50,
        concurrent_jobs=5,
        unfinished_jobs=500,
        time_limit_seconds=2 * 60 * 60,
        max_attempts=3,
        result_retention_days=7,
    ),
    SubscriptionTier.ENTERPRISE: TierLimits(
        included_jobs=1000,
        overage_cents_per_job=25,
        concurrent_jobs=25,
        unfinished_jobs=5000,
        time_limit_seconds=6 * 60 * 60,
        max_attempts=3,
        result_retention_days=7,
    ),
}


@dataclass(frozen=True)
class BillingCycle:
    start: datetime
    end: datetime


def billing_cycle(at: datetime) -> BillingCycle:
    """Cycles are calendar months in UTC; quotas reset at the start of each."""
    at = at.astimezone(UTC)
    start = datetime(at.year, at.month, 1, tzinfo=UTC)
    end = datetime(at.year + (at.month == 12), at.month % 12 + 1, 1, tzinfo=UTC)
    return BillingCycle(start, end)
