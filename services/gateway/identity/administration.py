"""What operators do to accounts: create a user (optionally with an API token), change a tier."""

from __future__ import annotations

from uuid import UUID, uuid4

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from ckrv.schemas.api import SubscriptionTier
from ckrv.services.gateway.identity.flows import create_api_token
from ckrv.services.gateway.tables import User


class AccountError(ValueError):
    """The account action cannot be done; the message says why."""


async def create_user(
    session: AsyncSession,
    email: str,
    tier: SubscriptionTier,
    *,
    name: str | None = None,
    with_token: bool = False,
) -> tuple[User, str | None]:
    """A new user, and a new API token for it when asked (shown only now)."""
    email = email.strip().lower()
    if "@" not in email or len(email) > 320:
        raise AccountError(f"{email!r} is not an email address")
    if await session.scalar(select(col(User.id)).where(col(User.email) == email)) is not None:
        raise AccountError(f"a user with the email {email} exists already")
    user = User(id=uuid4(), email=email, name=name or email.split("@")[0], subscription_tier=tier)
    session.add(user)
    await session.flush()
    token = None
    if with_token:
        _, token = await create_api_token(session, user.id, "created by an operator", None)
    return user, token


async def set_tier(session: AsyncSession, email: str, tier: SubscriptionTier) -> UUID:
    result = await session.execute(
        update(User)
        .where(col(User.email) == email.strip().lower())
        .values(subscription_tier=tier)
        .returning(col(User.id))
    )
    row = result.first()
    if row is None:
        raise AccountError(f"no user with the email {email}")
    user_id: UUID = row[0]
    return user_id
