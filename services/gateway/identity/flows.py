"""The OAuth2 flows, storage side: device authorization (RFC 8628), token issue, refresh rotation
with reuse detection (RFC 6749 §10.4), revocation (RFC 7009) and API tokens.

Errors are authlib's RFC error types, so their codes and bodies are exactly the RFCs'.
Secrets (device codes, refresh and API tokens) are kept only as SHA-256 hashes.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

from authlib.oauth2.rfc6749.errors import AccessDeniedError, InvalidGrantError
from authlib.oauth2.rfc8628.errors import (
    AuthorizationPendingError,
    ExpiredTokenError,
    SlowDownError,
)
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from ckrv.services.gateway.identity.keys import SigningKeys
from ckrv.services.gateway.identity.tables import ApiToken, DeviceAuthorization, RefreshToken

USER_CODE_LETTERS = "BCDFGHJKLMNPQRSTVWXZ"  # no vowels: no words, no O/0 or I/1 confusion
USER_CODE_DIGITS = "23456789"
API_TOKEN_PREFIX = "ckrv_"  # noqa: S105 - a prefix, not a secret
# RFC 8628 §3.5: each slow_down adds five seconds to the interval.
SLOW_DOWN_STEP_SECONDS = 5


@dataclass(frozen=True)
class IdentityPolicy:
    access_token_seconds: int
    refresh_token_days: int
    device_code_seconds: int
    poll_interval_seconds: int
    verification_uri: str


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def normalise_user_code(text: str) -> str:
    return "".join(character for character in text.upper() if character.isalnum())


def display_user_code(code: str) -> str:
    return f"{code[:4]}-{code[4:]}"


def _new_user_code() -> str:
    letters = "".join(secrets.choice(USER_CODE_LETTERS) for _ in range(4))
    digits = "".join(secrets.choice(USER_CODE_DIGITS) for _ in range(4))
    return letters + digits


def _now() -> datetime:
    return datetime.now(UTC)


async def start_device_authorization(
    session: AsyncSession, client_id: str, policy: IdentityPolicy
) -> dict[str, Any]:
    """Step A/B: a device code for the CLI and a user code for the person."""
    device_code = secrets.token_urlsafe(32)
    while True:
        user_code = _new_user_code()
        taken = await session.scalar(
            select(col(DeviceAuthorization.user_code)).where(
                col(DeviceAuthorization.user_code) == user_code
            )
        )
        if taken is None:
            break
    now = _now()
    session.add(
        DeviceAuthorization(
            device_code_hash=secret_hash(device_code),
            user_code=user_code,
            client_id=client_id,
            created_at=now,
            expires_at=now + timedelta(seconds=policy.device_code_seconds),
            interval_seconds=policy.poll_interval_seconds,
        )
    )
    shown = display_user_code(user_code)
    return {
        "device_code": device_code,
        "user_code": shown,
        "verification_uri": policy.verification_uri,
        "verification_uri_complete": f"{policy.verification_uri}?user_code={shown}",
        "expires_in": policy.device_code_seconds,
        "interval": policy.poll_interval_seconds,
    }


async def poll_device_authorization(
    session: AsyncSession,
    device_code: str,
    client_id: str,
    keys: SigningKeys,
    policy: IdentityPolicy,
) -> dict[str, Any]:
    """Step E/F: tokens once the user approved, else the RFC 8628 error for the state."""
    authorization = await session.get(
        DeviceAuthorization, secret_hash(device_code), with_for_update=True
    )
    if authorization is None or authorization.client_id != client_id:
        raise InvalidGrantError("unknown device_code")
    now = _now()
    if authorization.status == "consumed":
        raise InvalidGrantError("this device_code was already exchanged for tokens")
    if authorization.expires_at <= now:
        raise ExpiredTokenError()
    if authorization.status == "denied":
        raise AccessDeniedError()
    if authorization.status == "approved" and authorization.user_id is not None:
        authorization.status = "consumed"
        return await issue_tokens(session, authorization.user_id, client_id, keys, policy)
    polled_before = authorization.last_polled_at
    authorization.last_polled_at = now
    if polled_before is not None and (now - polled_before).total_seconds() < (
        authorization.interval_seconds
    ):
        authorization.interval_seconds += SLOW_DOWN_STEP_SECONDS
        raise SlowDownError()
    raise AuthorizationPendingError()


async def pending_authorization(
    session: AsyncSession, user_code: str
) -> DeviceAuthorization | None:
    """The request a user code names, whatever its state; None if there is none."""
    return await session.scalar(
        select(DeviceAuthorization).where(
            col(DeviceAuthorization.user_code) == normalise_user_code(user_code)
        )
    )


async def decide_device_authorization(
    session: AsyncSession, user_code: str, user_id: UUID, *, approve: bool
) -> bool:
    """Approve or deny a pending, unexpired request; False if it is not (any more)."""
    result = await session.execute(
        update(DeviceAuthorization)
        .where(
            col(DeviceAuthorization.user_code) == normalise_user_code(user_code),
            col(DeviceAuthorization.status) == "pending",
            col(DeviceAuthorization.expires_at) > _now(),
        )
        .values(status="approved" if approve else "denied", user_id=user_id)
        .returning(col(DeviceAuthorization.user_code))
    )
    return result.first() is not None


async def issue_tokens(
    session: AsyncSession,
    user_id: UUID,
    client_id: str,
    keys: SigningKeys,
    policy: IdentityPolicy,
    *,
    family_id: UUID | None = None,
) -> dict[str, Any]:
    access_token, lifetime = keys.issue(user_id, lifetime_seconds=policy.access_token_seconds)
    refresh_token = secrets.token_urlsafe(32)
    now = _now()
    session.add(
        RefreshToken(
            token_hash=secret_hash(refresh_token),
            family_id=family_id or uuid4(),
            user_id=user_id,
            client_id=client_id,
            created_at=now,
            expires_at=now + timedelta(days=policy.refresh_token_days),
        )
    )
    return {
        "access_token": access_token,
        "refresh_token": refresh_token,
        "token_type": "Bearer",
        "expires_in": lifetime,
        "scope": "jobs",
    }


async def rotate_refresh_token(
    session: AsyncSession,
    refresh_token: str,
    client_id: str,
    keys: SigningKeys,
    policy: IdentityPolicy,
) -> dict[str, Any]:
    """A new token pair for a current refresh token, which is used up.

    Presenting a refresh token that was already used means two parties hold it:
    the whole family (every token descended from one login) is revoked.
    """
    now = _now()
    token_hash = secret_hash(refresh_token)
    used = await session.execute(
        update(RefreshToken)
        .where(
            col(RefreshToken.token_hash) == token_hash,
            col(RefreshToken.client_id) == client_id,
            col(RefreshToken.used_at).is_(None),
            col(RefreshToken.revoked_at).is_(None),
            col(RefreshToken.expires_at) > now,
        )
        .values(used_at=now)
        .returning(col(RefreshToken.user_id), col(RefreshToken.family_id))
    )
    row = used.first()
    if row is not None:
        user_id, family_id = row
        return await issue_tokens(session, user_id, client_id, keys, policy, family_id=family_id)
    known = await session.get(RefreshToken, token_hash)
    if known is not None and known.used_at is not None:
        await revoke_family(session, known.family_id)
        raise InvalidGrantError("refresh token reused; every session of this login is revoked")
    raise InvalidGrantError("refresh token is not valid")


async def revoke_family(session: AsyncSession, family_id: UUID) -> None:
    await session.execute(
        update(RefreshToken)
        .where(col(RefreshToken.family_id) == family_id, col(RefreshToken.revoked_at).is_(None))
        .values(revoked_at=_now())
    )


async def revoke_token(session: AsyncSession, token: str) -> None:
    """RFC 7009: revoke a refresh token's family or an API token; unknown tokens are ignored."""
    token_hash = secret_hash(token)
    refresh = await session.get(RefreshToken, token_hash)
    if refresh is not None:
        await revoke_family(session, refresh.family_id)
        return
    await session.execute(
        update(ApiToken)
        .where(col(ApiToken.token_hash) == token_hash, col(ApiToken.revoked_at).is_(None))
        .values(revoked_at=_now())
    )


async def create_api_token(
    session: AsyncSession, user_id: UUID, name: str, expires_in_days: int | None
) -> tuple[ApiToken, str]:
    token = API_TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = _now()
    record = ApiToken(
        id=uuid4(),
        user_id=user_id,
        name=name,
        token_hash=secret_hash(token),
        display_prefix=token[: len(API_TOKEN_PREFIX) + 6],
        created_at=now,
        expires_at=now + timedelta(days=expires_in_days) if expires_in_days else None,
    )
    session.add(record)
    return record, token


async def api_token_owner(session: AsyncSession, token: str) -> UUID | None:
    """The owner of a current API token, recording its use; None if not valid."""
    now = _now()
    result = await session.execute(
        update(ApiToken)
        .where(
            col(ApiToken.token_hash) == secret_hash(token),
            col(ApiToken.revoked_at).is_(None),
            (col(ApiToken.expires_at).is_(None)) | (col(ApiToken.expires_at) > now),
        )
        .values(last_used_at=now)
        .returning(col(ApiToken.user_id))
    )
    row = result.first()
    return row[0] if row is not None else None
