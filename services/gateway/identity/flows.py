"""Sign-in state, storage side: device authorization requests (RFC 8628), refresh token
families, and API tokens. The OAuth protocol around them is authlib's (`authorization_server`).

Secrets (device codes, refresh and API tokens) are kept only as SHA-256 hashes.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from ckrv.services.gateway.identity.tables import ApiToken, DeviceAuthorization, RefreshToken

USER_CODE_LETTERS = "BCDFGHJKLMNPQRSTVWXZ"  # no vowels: no words, no O/0 or I/1 confusion
USER_CODE_DIGITS = "23456789"
API_TOKEN_PREFIX = "ckrv_"  # noqa: S105 - a prefix, not a secret


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


async def unused_user_code(session: AsyncSession) -> str:
    """A new user code, in its display form, that no other request has."""
    while True:
        code = _new_user_code()
        taken = await session.scalar(
            select(col(DeviceAuthorization.user_code)).where(
                col(DeviceAuthorization.user_code) == code
            )
        )
        if taken is None:
            return display_user_code(code)


def add_device_authorization(
    session: AsyncSession,
    device_code: str,
    user_code: str,
    client_id: str,
    *,
    lifetime_seconds: int,
    interval_seconds: int,
) -> None:
    now = _now()
    session.add(
        DeviceAuthorization(
            device_code_hash=secret_hash(device_code),
            user_code=normalise_user_code(user_code),
            client_id=client_id,
            created_at=now,
            expires_at=now + timedelta(seconds=lifetime_seconds),
            interval_seconds=interval_seconds,
        )
    )


async def device_authorization(
    session: AsyncSession, device_code: str
) -> DeviceAuthorization | None:
    """The request of a device code, locked until the transaction ends: concurrent polls of one
    code take turns, so its tokens are issued once."""
    return await session.get(DeviceAuthorization, secret_hash(device_code), with_for_update=True)


async def refresh_token_record(session: AsyncSession, token: str) -> RefreshToken | None:
    """A refresh token's row, locked until the transaction ends: of two concurrent uses of one
    token, the second sees the first and counts as a reuse."""
    return await session.get(RefreshToken, secret_hash(token), with_for_update=True)


def add_refresh_token(
    session: AsyncSession,
    token: str,
    user_id: UUID,
    client_id: str,
    *,
    family_id: UUID | None,
    lifetime_days: int,
) -> None:
    """Keep a new refresh token, of a new family unless it replaces one of `family_id`."""
    now = _now()
    session.add(
        RefreshToken(
            token_hash=secret_hash(token),
            family_id=family_id or uuid4(),
            user_id=user_id,
            client_id=client_id,
            created_at=now,
            expires_at=now + timedelta(days=lifetime_days),
        )
    )


async def api_token_record(session: AsyncSession, token: str) -> ApiToken | None:
    return await session.scalar(
        select(ApiToken).where(col(ApiToken.token_hash) == secret_hash(token))
    )


async def revoke_family(session: AsyncSession, family_id: UUID) -> None:
    """Revoke every refresh token descended from one login."""
    await session.execute(
        update(RefreshToken)
        .where(col(RefreshToken.family_id) == family_id, col(RefreshToken.revoked_at).is_(None))
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
