"""Sign-in endpoints: `/v1/auth/*` (device flow, token, refresh, revoke), `/v1/tokens`, and the
`/.well-known` documents (RFC 8414 metadata, JWKS).

The OAuth endpoints accept form encoding (as the RFCs say) and JSON (as the
open-source `ckrv` client sends), and answer errors in the RFC shape
`{error, error_description}`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from authlib.oauth2.base import OAuth2Error
from authlib.oauth2.rfc6749.errors import (
    InvalidClientError,
    InvalidRequestError,
    UnsupportedGrantTypeError,
)
from authlib.oauth2.rfc8628 import DEVICE_CODE_GRANT_TYPE
from fastapi import APIRouter, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from ckrv.services.gateway.auth import CurrentUser
from ckrv.services.gateway.context import ContextDep, GatewayContext
from ckrv.services.gateway.errors import not_found
from ckrv.services.gateway.identity.flows import (
    create_api_token,
    poll_device_authorization,
    revoke_token,
    rotate_refresh_token,
    start_device_authorization,
)
from ckrv.services.gateway.identity.tables import ApiToken

router = APIRouter(tags=["Auth"])
well_known = APIRouter(tags=["Auth"])
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


async def oauth_parameters(request: Request) -> dict[str, str]:
    """The request's parameters, from a form or a JSON object."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/json"):
        try:
            document = json.loads(await request.body() or b"{}")
        except ValueError as error:
            raise InvalidRequestError("the body is not valid JSON") from error
        if not isinstance(document, dict):
            raise InvalidRequestError("the body must be a JSON object")
        return {key: str(value) for key, value in document.items() if value is not None}
    form = await request.form()
    return {key: value for key, value in form.items() if isinstance(value, str)}


def _required(parameters: dict[str, str], name: str) -> str:
    value = parameters.get(name, "").strip()
    if not value:
        raise InvalidRequestError(f"missing {name!r}")
    return value


def _client(parameters: dict[str, str], context: GatewayContext) -> str:
    client_id = _required(parameters, "client_id")
    if client_id not in context.settings.oauth_clients:
        raise InvalidClientError(description=f"unknown client {client_id!r}")
    return client_id


def oauth_error_response(error: OAuth2Error) -> JSONResponse:
    status_code = 401 if isinstance(error, InvalidClientError) else error.status_code or 400
    return JSONResponse(dict(error.get_body()), status_code=status_code, headers=NO_STORE)


async def _oauth(
    request: Request,
    context: GatewayContext,
    handle: Callable[[dict[str, str]], Awaitable[dict[str, Any]]],
) -> JSONResponse:
    """Run one OAuth exchange in a transaction; RFC errors become RFC error bodies."""
    try:
        parameters = await oauth_parameters(request)
        body = await handle(parameters)
    except OAuth2Error as error:
        return oauth_error_response(error)
    return JSONResponse(body, headers=NO_STORE)


@router.post("/auth/device", summary="Start the device flow (RFC 8628 §3.1)")
async def device_authorization(request: Request, context: ContextDep) -> JSONResponse:
    async def handle(parameters: dict[str, str]) -> dict[str, Any]:
        client_id = _client(parameters, context)
        async with context.sessions() as session, session.begin():
            return await start_device_authorization(session, client_id, context.identity)

    return await _oauth(request, context, handle)


async def _exchange(
    context: GatewayContext, exchange: Callable[[AsyncSession], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    """Run one token exchange in a transaction that commits even when it is refused: a refusal
    can carry state that must stick (a poll time and slowed interval, a revoked token family)."""
    async with context.sessions() as session, session.begin():
        try:
            return await exchange(session)
        except OAuth2Error as error:
            refused = error
    raise refused


async def _device_code_grant(context: GatewayContext, parameters: dict[str, str]) -> dict[str, Any]:
    client_id = _client(parameters, context)
    device_code = _required(parameters, "device_code")
    return await _exchange(
        context,
        lambda session: poll_device_authorization(
            session, device_code, client_id, context.keys, context.identity
        ),
    )


async def _refresh_grant(context: GatewayContext, parameters: dict[str, str]) -> dict[str, Any]:
    client_id = _client(parameters, context)
    refresh_token = _required(parameters, "refresh_token")
    return await _exchange(
        context,
        lambda session: rotate_refresh_token(
            session, refresh_token, client_id, context.keys, context.identity
        ),
    )


@router.post("/auth/token", summary="Exchange a device code or a refresh token for tokens")
async def token(request: Request, context: ContextDep) -> JSONResponse:
    async def handle(parameters: dict[str, str]) -> dict[str, Any]:
        grant_type = _required(parameters, "grant_type")
        if grant_type == DEVICE_CODE_GRANT_TYPE:
            return await _device_code_grant(context, parameters)
        if grant_type == "refresh_token":
            return await _refresh_grant(context, parameters)
        raise UnsupportedGrantTypeError(grant_type)

    return await _oauth(request, context, handle)


@router.post("/auth/refresh", summary="Exchange a refresh token for a new pair (it rotates)")
async def refresh(request: Request, context: ContextDep) -> JSONResponse:
    async def handle(parameters: dict[str, str]) -> dict[str, Any]:
        grant_type = parameters.get("grant_type", "refresh_token")
        if grant_type != "refresh_token":
            raise UnsupportedGrantTypeError(grant_type)
        return await _refresh_grant(context, parameters)

    return await _oauth(request, context, handle)


@router.post("/auth/revoke", summary="Revoke a refresh or API token (RFC 7009)")
async def revoke(request: Request, context: ContextDep) -> Response:
    try:
        parameters = await oauth_parameters(request)
        token_value = _required(parameters, "token")
    except OAuth2Error as error:
        return oauth_error_response(error)
    async with context.sessions() as session, session.begin():
        await revoke_token(session, token_value)
    # RFC 7009 §2.2: the answer is the same whether or not the token was known.
    return JSONResponse({}, headers=NO_STORE)


@well_known.get("/.well-known/jwks.json", summary="Public keys of access tokens")
async def jwks(context: ContextDep) -> dict[str, Any]:
    return context.keys.public_jwks()


@well_known.get(
    "/.well-known/oauth-authorization-server", summary="Authorization server metadata (RFC 8414)"
)
async def metadata(context: ContextDep) -> dict[str, Any]:
    base = context.settings.base_url
    return {
        "issuer": context.keys.issuer,
        "device_authorization_endpoint": f"{base}/v1/auth/device",
        "token_endpoint": f"{base}/v1/auth/token",
        "revocation_endpoint": f"{base}/v1/auth/revoke",
        "jwks_uri": f"{base}/.well-known/jwks.json",
        "grant_types_supported": [DEVICE_CODE_GRANT_TYPE, "refresh_token"],
        "token_endpoint_auth_methods_supported": ["none"],
        "revocation_endpoint_auth_methods_supported": ["none"],
        "response_types_supported": [],
        "scopes_supported": ["jobs"],
    }


class ApiTokenCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100, description="What the token is for.")
    expires_in_days: int | None = Field(
        default=None, ge=1, le=3650, description="Lifetime; none means until revoked."
    )


class ApiTokenPublic(BaseModel):
    id: UUID
    name: str
    display_prefix: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None


class ApiTokenCreated(ApiTokenPublic):
    token: str = Field(description="The token itself; shown only in this response.")


class ApiTokensPublic(BaseModel):
    tokens: list[ApiTokenPublic]


def _public(token_record: ApiToken) -> dict[str, Any]:
    return {
        "id": token_record.id,
        "name": token_record.name,
        "display_prefix": token_record.display_prefix,
        "created_at": token_record.created_at,
        "expires_at": token_record.expires_at,
        "last_used_at": token_record.last_used_at,
    }


@router.post(
    "/tokens", status_code=status.HTTP_201_CREATED, response_model=ApiTokenCreated, tags=["Tokens"]
)
async def create_token(body: ApiTokenCreate, user: CurrentUser, context: ContextDep) -> Any:
    """A token for scripts and CI (`CKRV_TOKEN`); the value is shown once."""
    async with context.sessions() as session, session.begin():
        record, value = await create_api_token(session, user.id, body.name, body.expires_in_days)
    return ApiTokenCreated(**_public(record), token=value)


@router.get("/tokens", response_model=ApiTokensPublic, tags=["Tokens"])
async def list_tokens(user: CurrentUser, context: ContextDep) -> Any:
    async with context.sessions() as session:
        records = (
            await session.scalars(
                select(ApiToken)
                .where(col(ApiToken.user_id) == user.id, col(ApiToken.revoked_at).is_(None))
                .order_by(col(ApiToken.created_at))
            )
        ).all()
    return ApiTokensPublic(tokens=[ApiTokenPublic(**_public(record)) for record in records])


@router.delete("/tokens/{token_id}", status_code=status.HTTP_204_NO_CONTENT, tags=["Tokens"])
async def delete_token(token_id: UUID, user: CurrentUser, context: ContextDep) -> Response:
    async with context.sessions() as session, session.begin():
        record = await session.get(ApiToken, token_id, with_for_update=True)
        if record is None or record.user_id != user.id or record.revoked_at is not None:
            raise not_found(f"token {token_id}")
        record.revoked_at = datetime.now(UTC)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
