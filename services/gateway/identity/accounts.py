"""Who signs in on the activation page: local accounts (email and password) and users of an
upstream OpenID Connect provider. Both get the free tier when their user is created."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from ckrv.schemas.api import SubscriptionTier
from ckrv.services.gateway.identity.passwords import (
    hash_password,
    unknown_account_hash,
    verify_password,
)
from ckrv.services.gateway.identity.tables import LocalAccount, UpstreamIdentity
from ckrv.services.gateway.tables import User, utc_now

logger = logging.getLogger(__name__)

MAX_EMAIL_LENGTH = 320
# Each scrypt hash holds 32 MiB for half a second: a burst of sign-ins must not take the memory.
_HASHING = asyncio.Semaphore(4)


class AccountError(Exception):
    """Why a sign-up or sign-in is refused, in words for the person at the page."""


def normalise_email(text: str) -> str | None:
    """The address lower-cased, or None if it does not look like one."""
    email = text.strip().lower()
    local, at, domain = email.partition("@")
    if (
        not at
        or not local
        or "." not in domain
        or "@" in domain
        or len(email) > MAX_EMAIL_LENGTH
        or any(character.isspace() for character in email)
    ):
        return None
    return email


async def _hash(password: str) -> str:
    async with _HASHING:
        return await asyncio.to_thread(hash_password, password)


async def _verify(password: str, stored: str) -> bool:
    async with _HASHING:
        return await asyncio.to_thread(verify_password, password, stored)


async def _user_by_email(session: AsyncSession, email: str) -> User | None:
    # Every writer stores emails lower-cased, so plain equality (and the unique index) serves.
    return await session.scalar(select(User).where(col(User.email) == email))


async def create_local_account(
    session: AsyncSession, email: str, password: str, name: str | None
) -> User:
    """A new user of the free tier with a password; refused if the email is taken."""
    if await _user_by_email(session, email) is not None:
        raise AccountError("An account with this email already exists: sign in instead.")
    password_hash = await _hash(password)
    user_id = uuid4()
    created = await session.execute(
        insert(User)
        .values(
            id=user_id,
            email=email,
            name=name or email.split("@", maxsplit=1)[0],
            subscription_tier=SubscriptionTier.FREE.value,
            created_at=utc_now(),
        )
        .on_conflict_do_nothing()
        .returning(col(User.id))
    )
    if created.first() is None:
        raise AccountError("An account with this email already exists: sign in instead.")
    session.add(LocalAccount(user_id=user_id, password_hash=password_hash))
    await session.flush()
    user = await session.get(User, user_id)
    assert user is not None
    logger.info("local account created", extra={"user_id": str(user_id)})
    return user


async def authenticate_local(session: AsyncSession, email: str, password: str) -> User | None:
    """The user whose email and password these are; None otherwise (same time either way)."""
    user = await _user_by_email(session, email)
    account = await session.get(LocalAccount, user.id) if user is not None else None
    if account is None:
        await _verify(password, unknown_account_hash())
        return None
    if not await _verify(password, account.password_hash):
        return None
    return user


@dataclass(frozen=True)
class UpstreamClaims:
    """What the gateway takes from a verified ID token."""

    issuer: str
    subject: str
    email: str
    name: str | None


def upstream_claims(claims: Mapping[str, Any], issuer: str) -> UpstreamClaims:
    """The claims of an ID token authlib has verified, checked for what sign-in needs."""
    if claims.get("iss") != issuer:
        raise AccountError("The sign-in provider answered for another issuer.")
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise AccountError("The sign-in provider did not say who you are.")
    email = normalise_email(str(claims.get("email") or ""))
    if email is None:
        raise AccountError("The sign-in provider did not share an email address.")
    # An unverified address could be anyone's: it must not name (or take) an account.
    if claims.get("email_verified") is not True:
        raise AccountError("Verify your email address with the sign-in provider, then try again.")
    name = claims.get("name")
    return UpstreamClaims(
        issuer=issuer,
        subject=subject,
        email=email,
        name=name[:200] if isinstance(name, str) and name else None,
    )


async def user_for_upstream_identity(session: AsyncSession, claims: UpstreamClaims) -> User:
    """The user behind an upstream account, created with the free tier on first sign-in.

    A known (issuer, subject) is that user, even if the email changed since. Otherwise
    the verified email finds an existing user (an account made locally or by an
    operator) or, failing that, a new one; either way the upstream account is linked.
    """
    linked = await session.get(UpstreamIdentity, (claims.issuer, claims.subject))
    if linked is not None:
        user = await session.get(User, linked.user_id)
        if user is not None:
            return user
    await session.execute(
        insert(User)
        .values(
            id=uuid4(),
            email=claims.email,
            name=claims.name or claims.email.split("@")[0],
            subscription_tier=SubscriptionTier.FREE.value,
            created_at=utc_now(),
        )
        # A user with this email (created before, or by a sign-in racing this one) is kept.
        .on_conflict_do_nothing(index_elements=["email"])
    )
    user = await _user_by_email(session, claims.email)
    assert user is not None
    await session.execute(
        insert(UpstreamIdentity)
        .values(issuer=claims.issuer, subject=claims.subject, user_id=user.id, created_at=utc_now())
        .on_conflict_do_update(index_elements=["issuer", "subject"], set_={"user_id": user.id})
    )
    logger.info("upstream identity linked", extra={"user_id": str(user.id)})
    return user
