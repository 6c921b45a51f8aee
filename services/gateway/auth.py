"""Who is calling: the bearer token resolved to a user.

Access tokens (short-lived JWTs from the device flow) and API tokens (`ckrv_…`,
for scripts and CI) are the two kinds of bearer token.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import Depends, Request

from ckrv.services.gateway.context import ContextDep, SessionDep
from ckrv.services.gateway.errors import ApiError
from ckrv.services.gateway.identity.flows import API_TOKEN_PREFIX, api_token_owner
from ckrv.services.gateway.identity.keys import InvalidAccessToken
from ckrv.services.gateway.tables import User


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message)


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("send `Authorization: Bearer <token>`; `ckrv cloud login` gets one")
    return token.strip()


async def caller_id(request: Request, context: ContextDep) -> UUID:
    """The id of the user the bearer token speaks for (an access token or an API token),
    without checking that the user still exists: a handler that reads the user's row anyway
    checks it there, and saves the round trips. Any failure is the same 401."""
    token = bearer_token(request)
    if token.startswith(API_TOKEN_PREFIX):
        # A session of its own, given back before the handler runs: a handler that opens
        # sessions must not find the pool taken by requests each holding one already.
        async with context.sessions() as session, session.begin():
            user_id = await api_token_owner(session, token)
    else:
        try:
            user_id = context.keys.verify(token).user_id
        except InvalidAccessToken:
            user_id = None
    if user_id is None:
        raise _invalid_token()
    return user_id


async def current_user(user_id: Annotated[UUID, Depends(caller_id)], session: SessionDep) -> User:
    """The user behind the bearer token; a token of a removed user is refused like any other."""
    user = await session.get(User, user_id)
    # The request's session, which the handler goes on using: its connection is given back.
    await session.close()
    if user is None:
        raise _invalid_token()
    return user


def _invalid_token() -> ApiError:
    return _unauthorized("the token is not valid or has expired; run `ckrv cloud login`")


CallerId = Annotated[UUID, Depends(caller_id)]
CurrentUser = Annotated[User, Depends(current_user)]
