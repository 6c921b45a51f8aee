"""Who is calling: the bearer token resolved to a user.

Access tokens (short-lived JWTs from the device flow) and API tokens (`ckrv_…`,
for scripts) are accepted everywhere. Development tokens `dev:<email>[:<tier>]`
work only when `CKRV_GATEWAY_DEV_AUTH` is on, which the settings refuse outside
`CKRV_ENV=dev`.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID, uuid5

from fastapi import Depends, Request
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from ckrv.schemas.api import SubscriptionTier
from ckrv.services.gateway.context import ContextDep
from ckrv.services.gateway.errors import ApiError
from ckrv.services.gateway.identity.flows import API_TOKEN_PREFIX, api_token_owner
from ckrv.services.gateway.identity.keys import InvalidAccessToken
from ckrv.services.gateway.tables import User

DEV_TOKEN_PREFIX = "dev:"  # noqa: S105 - a prefix, not a secret
DEV_USER_NAMESPACE = UUID("5d1f0c52-3b8e-5a53-9a4f-2f6e8c0b7d11")


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message)


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("send `Authorization: Bearer <token>`; `ckrv cloud login` gets one")
    return token.strip()


async def current_user(request: Request, context: ContextDep) -> User:
    """The user behind the bearer token: an access token (JWT), an API token, or in
    development a `dev:` token. Any failure is the same 401, whatever its reason."""
    token = bearer_token(request)
    # A session of its own, given back before the handler runs: a handler that opens
    # sessions must not find the pool taken by requests each holding one already.
    async with context.sessions() as session:
        if token.startswith(API_TOKEN_PREFIX):
            async with session.begin():
                user_id = await api_token_owner(session, token)
        elif context.settings.dev_auth and token.startswith(DEV_TOKEN_PREFIX):
            return await _development_user(session, token.removeprefix(DEV_TOKEN_PREFIX))
        else:
            try:
                user_id = context.keys.verify(token).user_id
            except InvalidAccessToken:
                user_id = None
        user = await session.get(User, user_id) if user_id is not None else None
    if user is None:
        raise _unauthorized("the token is not valid or has expired; run `ckrv cloud login`")
    return user


async def _development_user(session: AsyncSession, identity: str) -> User:
    email, _, tier_name = identity.partition(":")
    if "@" not in email:
        raise _unauthorized("a development token is `dev:<email>[:<tier>]`")
    try:
        tier = SubscriptionTier(tier_name or SubscriptionTier.FREE)
    except ValueError as error:
        raise _unauthorized(f"unknown tier {tier_name!r} in the development token") from error
    user_id = uuid5(DEV_USER_NAMESPACE, email.lower())
    user = await session.get(User, user_id)
    if user is not None and user.subscription_tier == tier:
        return user
    # The token names the tier, so a test or demo can switch a user's tier at will.
    await session.execute(
        insert(User)
        .values(id=user_id, email=email.lower(), name=email.split("@")[0], subscription_tier=tier)
        .on_conflict_do_update(index_elements=["id"], set_={"subscription_tier": tier})
    )
    await session.commit()
    user = await session.get(User, user_id, populate_existing=True)
    assert user is not None
    return user


CurrentUser = Annotated[User, Depends(current_user)]
