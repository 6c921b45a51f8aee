"""`/v1/users/me` and `/v1/billing/usage`: who the caller is, their tier and quota."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter

from ckrv.schemas.api import SubscriptionTier, UsagePublic, UserPublic
from ckrv.services.gateway.auth import CurrentUser
from ckrv.services.gateway.context import SessionDep
from ckrv.services.gateway.quota import usage

router = APIRouter(tags=["Users"])


@router.get("/users/me", response_model=UserPublic)
async def me(user: CurrentUser, session: SessionDep) -> UserPublic:
    current = await usage(
        session, user.id, SubscriptionTier(user.subscription_tier), datetime.now(UTC)
    )
    return UserPublic(
        id=user.id,
        email=user.email,
        name=user.name,
        subscription_tier=current.tier,
        job_quota_remaining=current.remaining_included,
        billing_cycle_end=current.cycle.end,
    )


@router.get("/billing/usage", response_model=UsagePublic, tags=["Billing"])
async def billing_usage(user: CurrentUser, session: SessionDep) -> UsagePublic:
    current = await usage(
        session, user.id, SubscriptionTier(user.subscription_tier), datetime.now(UTC)
    )
    return current.public()
