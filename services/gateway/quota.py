"""The quota ledger: jobs charged per billing cycle, included jobs and overage."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import ColumnElement, bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from ckrv.schemas.api import SubscriptionTier, UsagePublic
from ckrv.services.common.tiers import TIERS, BillingCycle, billing_cycle
from ckrv.services.gateway.tables import QuotaCharge


@dataclass(frozen=True)
class Usage:
    tier: SubscriptionTier
    cycle: BillingCycle
    charged_jobs: int
    overage_jobs: int
    overage_cents: int

    @property
    def included_jobs(self) -> int:
        return TIERS[self.tier].included_jobs

    @property
    def remaining_included(self) -> int:
        return max(0, self.included_jobs - self.charged_jobs)

    def public(self) -> UsagePublic:
        return UsagePublic(
            billing_cycle_start=self.cycle.start,
            billing_cycle_end=self.cycle.end,
            subscription_tier=self.tier,
            jobs_this_cycle=self.charged_jobs,
            jobs_included=self.included_jobs,
            overage_jobs=self.overage_jobs,
            overage_amount_cents=self.overage_cents,
            overage_amount=f"{self.overage_cents / 100:.2f}",
        )


def _charged(user_id: Any, cycle_start: Any) -> tuple[ColumnElement[bool], ...]:
    """The user's charges in the cycle, refunded ones left out (values or bound parameters)."""
    return (
        col(QuotaCharge.user_id) == user_id,
        col(QuotaCharge.cycle_start) == cycle_start,
        col(QuotaCharge.refunded_at).is_(None),
    )


# How many jobs user `user_id` is charged for in the cycle starting at `cycle_start`;
# built once, as building a statement costs more than running it.
CHARGED_JOBS = select(func.count()).where(*_charged(bindparam("user_id"), bindparam("cycle_start")))


async def usage(
    session: AsyncSession, user_id: UUID, tier: SubscriptionTier, at: datetime
) -> Usage:
    cycle = billing_cycle(at)
    charged, overage, cents = (
        await session.execute(
            select(
                func.count(),
                func.count().filter(col(QuotaCharge.overage)),
                func.coalesce(func.sum(QuotaCharge.amount_cents), 0),
            ).where(*_charged(user_id, cycle.start))
        )
    ).one()
    return Usage(tier, cycle, int(charged), int(overage), int(cents))
