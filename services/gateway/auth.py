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

DEV_USER_NAMESPACE = UUID("5d1f0c52-3b8e-5a53-9a4f-2f6e8c0b7d11")


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message)


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("send `Authorization: Bearer <token>`; `ckrv cloud login` gets one")
    return token.strip()


async def current_user(request: Request, context: ContextDep, session: SessionDep) -> User:
    """The user behind the bearer token (an access token or an API token).

    Any failure is the same 401, whatever its reason."""
    token = bearer_token(request)
    # The request's session, which the handler goes on using. Its connection is given back
    # before the handler runs (closing detaches the user from it): a handler that opens
    # sessions must not find the pool taken by requests each holding one already.
    if token.startswith(API_TOKEN_PREFIX):
        async with session.begin():
            user_id = await api_token_owner(session, token)
    else:
        try:
            user_id = context.keys.verify(token).user_id
        except InvalidAccessToken:
            user_id = None
    user = await session.get(User, user_id) if user_id is not None else None
    await session.close()
    if user is None:
        raise _unauthorized("the token is not valid or has expired; run `ckrv cloud login`")
    return user


CurrentUser = Annotated[User, Depends(current_user)]
