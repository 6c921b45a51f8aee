"""Users of an upstream OpenID Connect provider: created with the free tier on first sign-in,
found again by (issuer, subject), and linked to an existing user with the same verified email.

The provider itself cannot run here; these call the step after authlib has verified
the ID token, against the real database.
"""

from __future__ import annotations

from uuid import uuid4

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col

from ckrv.schemas.api import SubscriptionTier
from ckrv.services.common.db import session_factory
from ckrv.services.gateway.identity.accounts import UpstreamClaims, user_for_upstream_identity
from ckrv.services.gateway.identity.administration import create_user
from ckrv.services.gateway.identity.tables import LocalAccount, UpstreamIdentity
from ckrv.services.gateway.tables import User

# The gateway fixture creates the schema.
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("gateway")]

ISSUER = "https://login.example.com"


def _claims(email: str, subject: str | None = None) -> UpstreamClaims:
    return UpstreamClaims(
        issuer=ISSUER, subject=subject or uuid4().hex, email=email, name="Upstream Person"
    )


async def test_first_sign_in_creates_a_free_user_and_links_it(database: AsyncEngine) -> None:
    claims = _claims(f"oidc-{uuid4().hex[:12]}@example.com")

    async with session_factory(database)() as session, session.begin():
        user = await user_for_upstream_identity(session, claims)

    async with session_factory(database)() as session:
        stored = await session.get(User, user.id)
        link = await session.get(UpstreamIdentity, (ISSUER, claims.subject))
        password = await session.get(LocalAccount, user.id)
    assert stored is not None
    assert (stored.email, stored.name, stored.subscription_tier) == (
        claims.email,
        "Upstream Person",
        "free",
    )
    assert link is not None
    assert link.user_id == user.id
    assert password is None  # no password: this user signs in upstream only


async def test_the_same_subject_is_the_same_user_even_with_a_new_email(
    database: AsyncEngine,
) -> None:
    first = _claims(f"oidc-{uuid4().hex[:12]}@example.com")
    async with session_factory(database)() as session, session.begin():
        user = await user_for_upstream_identity(session, first)
    moved = _claims(f"oidc-{uuid4().hex[:12]}@example.com", subject=first.subject)

    async with session_factory(database)() as session, session.begin():
        again = await user_for_upstream_identity(session, moved)

    assert again.id == user.id
    async with session_factory(database)() as session:
        users = await session.scalar(
            select(func.count()).where(col(User.email).in_([first.email, moved.email]))
        )
    assert users == 1


async def test_a_verified_email_of_an_existing_user_signs_in_as_that_user(
    database: AsyncEngine,
) -> None:
    email = f"oidc-{uuid4().hex[:12]}@example.com"
    async with session_factory(database)() as session, session.begin():
        existing, _ = await create_user(session, email, SubscriptionTier.PRO)

    async with session_factory(database)() as session, session.begin():
        user = await user_for_upstream_identity(session, _claims(email))

    assert user.id == existing.id
    assert user.subscription_tier == "pro"  # an existing user keeps their tier
