"""The gateway as OAuth 2.0 authorization server, on authlib's server classes: the device
authorization endpoint and `device_code` grant (RFC 8628), the `refresh_token` grant with
rotation and reuse detection (RFC 6749 §6, §10.4), and revocation (RFC 7009).

authlib has no Starlette server integration; `GatewayAuthorizationServer` is one, as its Flask
and Django integrations are. authlib's server is synchronous and the storage is asyncio
PostgreSQL, so an exchange runs in a worker thread (`exchange`) and each storage call authlib
makes comes back to the event loop for its query (`_on_loop`). A server is made for each
exchange, bound to the exchange's one transaction, which commits even when the request is
refused: a refusal can carry state that must stick (a poll time and slowed interval, a revoked
token family).

Clients are public (`token_endpoint_auth_method` "none"): a client id, no secret. A request
without `client_id` is `invalid_request` (the parameter is required, RFC 8628 §3.1), an
unknown one `invalid_client` with 401; revocation asks for no client id, as holding the
token is what entitles its revocation.

Kept by the gateway around authlib's classes: reading JSON bodies as well as forms (the
open-source client posts JSON), `invalid_request` for a missing `grant_type` (authlib says
`unsupported_grant_type`), 400 for `unsupported_token_type` (authlib says 401), and the RFC 8414
metadata document (`routes`; authlib's model refuses the empty `response_types_supported` of a
server without an authorization endpoint).
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar, TypeVarTuple
from uuid import UUID

import anyio.from_thread
import anyio.to_thread
from authlib.oauth2 import AuthorizationServer, OAuth2Error, OAuth2Request
from authlib.oauth2.rfc6749 import (
    InvalidClientError,
    InvalidGrantError,
    InvalidRequestError,
    OAuth2Payload,
    RefreshTokenGrant,
    UnsupportedTokenTypeError,
)
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc8628 import (
    DEVICE_CODE_GRANT_TYPE,
    DeviceAuthorizationEndpoint,
    DeviceCodeGrant,
)
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request

from ckrv.services.gateway.context import GatewayContext
from ckrv.services.gateway.identity.flows import (
    add_device_authorization,
    add_refresh_token,
    api_token_record,
    device_authorization,
    pending_authorization,
    refresh_token_record,
    revoke_family,
    unused_user_code,
)
from ckrv.services.gateway.identity.tables import ApiToken, DeviceAuthorization, RefreshToken

SCOPE = "jobs"
REFRESH_TOKEN_GRANT_TYPE = RefreshTokenGrant.GRANT_TYPE
GRANT_TYPES = (DEVICE_CODE_GRANT_TYPE, REFRESH_TOKEN_GRANT_TYPE)
# RFC 8628 §3.5: each slow_down adds five seconds to the interval.
SLOW_DOWN_STEP_SECONDS = 5

# authlib's grants log each token they issue at debug level: its loggers stay above that, so no
# token reaches a log line whatever the service's level.
logging.getLogger("authlib.oauth2").setLevel(logging.INFO)

Result = TypeVar("Result")
Arguments = TypeVarTuple("Arguments")


def _now() -> datetime:
    return datetime.now(UTC)


def _on_loop(
    function: Callable[[*Arguments], Coroutine[Any, Any, Result]], *args: *Arguments
) -> Result:
    """Run a storage coroutine on the event loop, from the worker thread authlib runs in."""
    return anyio.from_thread.run(function, *args)


@dataclass(frozen=True)
class PublicClient:
    """A registered client (authlib's `ClientMixin`): public, device flow and refresh."""

    client_id: str

    def get_client_id(self) -> str:
        return self.client_id

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == "none"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in GRANT_TYPES

    def get_allowed_scope(self, scope: str | None) -> str:
        # The one scope there is; a request for another was refused before tokens are made.
        return SCOPE


@dataclass(frozen=True)
class _DeviceCredential:
    """A device authorization row as authlib's `DeviceCredentialMixin`."""

    row: DeviceAuthorization

    def get_client_id(self) -> str:
        return self.row.client_id

    def get_scope(self) -> str:
        return self.row.scope

    def get_user_code(self) -> str:
        return self.row.user_code

    def is_expired(self) -> bool:
        return self.row.expires_at <= _now()


@dataclass(frozen=True)
class _RefreshToken:
    """A refresh token row as authlib's `TokenMixin`."""

    row: RefreshToken

    def check_client(self, client: PublicClient | None) -> bool:
        # No client named (a revocation): holding the token is what counts.
        return client is None or self.row.client_id == client.client_id

    def get_scope(self) -> str:
        return SCOPE


@dataclass(frozen=True)
class _ApiToken:
    """An API token row as authlib's `TokenMixin`, for revocation."""

    row: ApiToken

    def check_client(self, client: PublicClient | None) -> bool:
        # API tokens belong to no client: whoever holds one may revoke it.
        return True

    def get_scope(self) -> str:
        return SCOPE


class _Parameters(OAuth2Payload):  # type: ignore[misc]  # authlib has no type information
    def __init__(self, parameters: Mapping[str, str]) -> None:
        self._parameters = dict(parameters)

    @property
    def data(self) -> dict[str, str]:
        return self._parameters

    @property
    def datalist(self) -> dict[str, list[str]]:
        return {name: [value] for name, value in self._parameters.items()}


class GatewayOAuth2Request(OAuth2Request):  # type: ignore[misc]
    """An OAuth request with its parameters, read from the body before (which takes awaiting)."""

    def __init__(self, request: Request, public_url: str, parameters: Mapping[str, str]) -> None:
        # TLS ends in front of the gateway, so the address this process was reached at says
        # nothing of the client's transport; authlib's HTTPS check is made on the public one.
        super().__init__(request.method, f"{public_url}{request.url.path}", headers=request.headers)
        self.payload = _Parameters(parameters)

    @property
    def form(self) -> dict[str, str]:
        data: dict[str, str] = self.payload.data
        return data


def _authenticate_public_client(
    query_client: Callable[[str], PublicClient | None], request: GatewayOAuth2Request
) -> PublicClient:
    """The `none` method: the client names itself with `client_id`."""
    client_id = request.payload.client_id
    if not client_id:
        raise InvalidRequestError("missing 'client_id'")
    client = query_client(client_id)
    if client is None:
        # Not the client id in the description: RFC 6749 allows only some characters there.
        raise InvalidClientError(status_code=401, description="unknown client")
    return client


class _DeviceAuthorizationEndpoint(DeviceAuthorizationEndpoint):  # type: ignore[misc]
    CLIENT_AUTH_METHODS = ("none",)
    server: GatewayAuthorizationServer

    def __init__(self, server: GatewayAuthorizationServer) -> None:
        super().__init__(server)
        self.EXPIRES_IN = server.policy.device_code_seconds
        self.INTERVAL = server.policy.poll_interval_seconds

    def generate_user_code(self) -> str:
        return _on_loop(unused_user_code, self.server.db)

    def get_verification_uri(self) -> str:
        return self.server.policy.verification_uri

    def save_device_credential(
        self, client_id: str, scope: str | None, data: dict[str, Any]
    ) -> None:
        add_device_authorization(
            self.server.db,
            data["device_code"],
            data["user_code"],
            client_id,
            lifetime_seconds=data["expires_in"],
            interval_seconds=data["interval"],
        )


class _DeviceCodeGrant(DeviceCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ("none",)
    server: GatewayAuthorizationServer

    def query_device_credential(self, device_code: str) -> _DeviceCredential:
        row = _on_loop(device_authorization, self.server.db, device_code)
        # RFC 6749 §5.2: a code of another client is as invalid as an unknown one.
        if row is None or row.client_id != self.request.payload.client_id:
            raise InvalidGrantError("unknown device_code")
        if row.status == "consumed":
            raise InvalidGrantError("this device_code was already exchanged for tokens")
        return _DeviceCredential(row)

    def query_user_grant(self, user_code: str) -> tuple[UUID, bool] | None:
        row = _on_loop(pending_authorization, self.server.db, user_code)
        if row is None or row.user_id is None or row.status not in ("approved", "denied"):
            return None
        return row.user_id, row.status == "approved"

    def should_slow_down(self, credential: _DeviceCredential) -> bool:
        row, now = credential.row, _now()
        polled_before, row.last_polled_at = row.last_polled_at, now
        if polled_before is None or (now - polled_before).total_seconds() >= row.interval_seconds:
            return False
        row.interval_seconds += SLOW_DOWN_STEP_SECONDS
        return True

    def save_token(self, token: dict[str, Any]) -> None:
        super().save_token(token)
        credential: _DeviceCredential = self.request.credential
        # A device code yields tokens once.
        credential.row.status = "consumed"


class _RefreshTokenGrant(RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ("none",)
    INCLUDE_NEW_REFRESH_TOKEN = True  # refresh tokens rotate
    server: GatewayAuthorizationServer

    def authenticate_refresh_token(self, refresh_token: str) -> _RefreshToken | None:
        row = _on_loop(refresh_token_record, self.server.db, refresh_token)
        if row is None:
            return None
        if row.used_at is not None:
            # A used token again means two parties hold it: every token of its login goes.
            _on_loop(revoke_family, self.server.db, row.family_id)
            raise InvalidGrantError("refresh token reused; every session of this login is revoked")
        if row.revoked_at is not None or row.expires_at <= _now():
            return None
        return _RefreshToken(row)

    def authenticate_user(self, refresh_token: _RefreshToken) -> UUID:
        return refresh_token.row.user_id

    def revoke_old_credential(self, refresh_token: _RefreshToken) -> None:
        refresh_token.row.used_at = _now()


class _RevocationEndpoint(RevocationEndpoint):  # type: ignore[misc]
    CLIENT_AUTH_METHODS = ("none",)
    server: GatewayAuthorizationServer

    def authenticate_endpoint_client(self, request: GatewayOAuth2Request) -> PublicClient | None:
        if not request.payload.client_id:
            request.client = None
            return None
        client: PublicClient = super().authenticate_endpoint_client(request)
        return client

    def check_params(self, request: GatewayOAuth2Request, client: PublicClient | None) -> None:
        if not request.form.get("token"):
            raise InvalidRequestError("missing 'token'")
        try:
            super().check_params(request, client)
        except UnsupportedTokenTypeError as error:
            # RFC 7009 §2.2.1 answers as RFC 6749 §5.2 does, with 400; authlib says 401.
            error.status_code = 400
            raise

    def query_token(
        self, token_string: str, token_type_hint: str | None
    ) -> _RefreshToken | _ApiToken | None:
        # The hint is only a hint (RFC 7009 §2.1): both kinds are looked for either way.
        if refresh_token := _on_loop(refresh_token_record, self.server.db, token_string):
            return _RefreshToken(refresh_token)
        if api_token := _on_loop(api_token_record, self.server.db, token_string):
            return _ApiToken(api_token)
        return None

    def revoke_token(self, token: _RefreshToken | _ApiToken, request: GatewayOAuth2Request) -> None:
        if isinstance(token, _RefreshToken):
            # A refresh token ends its whole login (every rotation of it).
            _on_loop(revoke_family, self.server.db, token.row.family_id)
        elif token.row.revoked_at is None:
            token.row.revoked_at = _now()


class GatewayAuthorizationServer(AuthorizationServer):  # type: ignore[misc]
    """authlib's authorization server for Starlette, bound to one exchange's transaction."""

    def __init__(self, db: AsyncSession, context: GatewayContext) -> None:
        super().__init__(scopes_supported=[SCOPE])
        self.db = db
        self.policy = context.identity
        self._clients = frozenset(context.settings.oauth_clients)
        keys, lifetime = context.keys, context.identity.access_token_seconds
        self.register_client_auth_method("none", _authenticate_public_client)
        self.register_token_generator(
            "default",
            BearerTokenGenerator(
                access_token_generator=lambda client, grant_type, user, scope: keys.issue(
                    user, lifetime_seconds=lifetime, scope=scope
                )[0],
                refresh_token_generator=lambda client, grant_type, user, scope: (
                    secrets.token_urlsafe(32)
                ),
                expires_generator=lifetime,
            ),
        )
        self.register_grant(_DeviceCodeGrant)
        self.register_grant(_RefreshTokenGrant)
        self.register_endpoint(_DeviceAuthorizationEndpoint(self))
        self.register_endpoint(_RevocationEndpoint)

    def query_client(self, client_id: str) -> PublicClient | None:
        return PublicClient(client_id) if client_id in self._clients else None

    def save_token(self, token: dict[str, Any], request: GatewayOAuth2Request) -> None:
        """Keep the refresh token (access tokens are self-contained JWTs, kept nowhere)."""
        if "refresh_token" not in token:
            return
        replaced: _RefreshToken | None = request.refresh_token
        add_refresh_token(
            self.db,
            token["refresh_token"],
            request.user,
            request.client.client_id,
            family_id=replaced.row.family_id if replaced is not None else None,
            lifetime_days=self.policy.refresh_token_days,
        )

    def create_oauth2_request(self, request: GatewayOAuth2Request) -> GatewayOAuth2Request:
        # Built before the worker thread starts (`exchange`): reading the body takes awaiting.
        return request

    def handle_response(
        self, status_code: int, body: Any, headers: list[tuple[str, str]]
    ) -> JSONResponse:
        return JSONResponse(body, status_code=status_code, headers=dict(headers))

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        """authlib's notifications (a client authenticated, a token revoked): none is used."""


async def read_parameters(request: Request) -> dict[str, str]:
    """The request's parameters, from a form (as the RFCs say) or a JSON object (as the
    open-source `ckrv` client sends them)."""
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


async def exchange(
    request: Request,
    context: GatewayContext,
    respond: Callable[[GatewayAuthorizationServer, GatewayOAuth2Request], JSONResponse],
    *,
    defaults: Mapping[str, str] | None = None,
) -> JSONResponse:
    """Answer an OAuth request with `respond` (one of authlib's `create_*_response`), in a worker
    thread and one transaction; `defaults` are parameters the request may leave out."""
    async with context.sessions() as db, db.begin():
        server = GatewayAuthorizationServer(db, context)
        try:
            parameters = {**(defaults or {}), **await read_parameters(request)}
            oauth_request = GatewayOAuth2Request(request, context.settings.base_url, parameters)
        except OAuth2Error as error:
            response: JSONResponse = server.handle_error_response(None, error)
            return response
        return await anyio.to_thread.run_sync(respond, server, oauth_request)
