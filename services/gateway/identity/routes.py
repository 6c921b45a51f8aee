"""Sign-in endpoints: `/v1/auth/*` (device flow, token, refresh, revoke), `/v1/tokens`, and the
`/.well-known` documents (RFC 8414 metadata, JWKS).

The OAuth endpoints are authlib's (`authorization_server`); they accept form encoding (as the
RFCs say) and JSON (as the open-source `ckrv` client sends), and answer errors in the RFC shape
`{error, error_description}`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from authlib.oauth2.rfc6749 import InvalidRequestError, UnsupportedGrantTypeError
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc8628 import DeviceAuthorizationEndpoint
from fastapi import APIRouter, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlmodel import col

from ckrv.services.gateway.auth import CurrentUser
from ckrv.services.gateway.context import ContextDep
from ckrv.services.gateway.errors import not_found
from ckrv.services.gateway.identity.authorization_server import (
    GRANT_TYPES,
    REFRESH_TOKEN_GRANT_TYPE,
    SCOPE,
    GatewayAuthorizationServer,
    GatewayOAuth2Request,
    exchange,
)
from ckrv.services.gateway.identity.flows import create_api_token
from ckrv.services.gateway.identity.tables import ApiToken

router = APIRouter(tags=["Auth"])
well_known = APIRouter(tags=["Auth"])


def _endpoint(
    name: str,
) -> Callable[[GatewayAuthorizationServer, GatewayOAuth2Request], JSONResponse]:
    """The answer of authlib's endpoint `name` to a request."""

    def respond(
        server: GatewayAuthorizationServer, oauth_request: GatewayOAuth2Request
    ) -> JSONResponse:
        response: JSONResponse = server.create_endpoint_response(name, oauth_request)
        return response

    return respond


@router.post("/auth/device", summary="Start the device flow (RFC 8628 §3.1)")
async def device_authorization(request: Request, context: ContextDep) -> JSONResponse:
    return await exchange(request, context, _endpoint(DeviceAuthorizationEndpoint.ENDPOINT_NAME))


def _token_response(
    server: GatewayAuthorizationServer, oauth_request: GatewayOAuth2Request
) -> JSONResponse:
    response: JSONResponse
    if not oauth_request.payload.grant_type:
        # authlib would say `unsupported_grant_type`; a missing parameter is `invalid_request`.
        response = server.handle_error_response(
            oauth_request, InvalidRequestError("missing 'grant_type'")
        )
    else:
        response = server.create_token_response(oauth_request)
    return response


@router.post("/auth/token", summary="Exchange a device code or a refresh token for tokens")
async def token(request: Request, context: ContextDep) -> JSONResponse:
    return await exchange(request, context, _token_response)


def _refresh_response(
    server: GatewayAuthorizationServer, oauth_request: GatewayOAuth2Request
) -> JSONResponse:
    response: JSONResponse
    grant_type = oauth_request.payload.grant_type
    if grant_type != REFRESH_TOKEN_GRANT_TYPE:
        response = server.handle_error_response(
            oauth_request, UnsupportedGrantTypeError(grant_type)
        )
    else:
        response = server.create_token_response(oauth_request)
    return response


@router.post("/auth/refresh", summary="Exchange a refresh token for a new pair (it rotates)")
async def refresh(request: Request, context: ContextDep) -> JSONResponse:
    return await exchange(
        request, context, _refresh_response, defaults={"grant_type": REFRESH_TOKEN_GRANT_TYPE}
    )


@router.post("/auth/revoke", summary="Revoke a refresh or API token (RFC 7009)")
async def revoke(request: Request, context: ContextDep) -> JSONResponse:
    return await exchange(request, context, _endpoint(RevocationEndpoint.ENDPOINT_NAME))


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
        "grant_types_supported": list(GRANT_TYPES),
        "token_endpoint_auth_methods_supported": ["none"],
        "revocation_endpoint_auth_methods_supported": ["none"],
        "response_types_supported": [],
        "scopes_supported": [SCOPE],
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
