"""Stored git credentials by owner and name; their values are encrypted at rest.

The gateway stores, lists and removes them; the dispatcher opens one for a job
with `open_credential`. Values are sealed with AES-GCM (`sealing.KeyRing`) and
bound to their owner and name, so a ciphertext moved to another row does not open.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID, uuid4

from pydantic import SecretStr
from sqlalchemy import DateTime, UniqueConstraint, delete, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel, col

from ckrv.schemas.api import GitCredentialType, GitProvider
from ckrv.services.common.sealing import KeyRing, Sealed, UnsealError


def _utc_now() -> datetime:
    return datetime.now(UTC)


class GitCredential(SQLModel, table=True):
    __tablename__ = "git_credentials"
    __table_args__ = (UniqueConstraint("user_id", "name"),)

    id: UUID = Field(primary_key=True)
    user_id: UUID = Field(index=True)
    name: str = Field(max_length=50)
    provider: str = Field(max_length=20)
    credential_type: str = Field(max_length=20)
    key_id: str = Field(max_length=50, description="Which encryption key sealed the value.")
    ciphertext: bytes
    created_at: datetime = Field(
        default_factory=_utc_now, sa_type=DateTime(timezone=True), nullable=False
    )
    last_used_at: datetime | None = Field(
        default=None, sa_type=DateTime(timezone=True), nullable=True
    )


@dataclass(frozen=True)
class OpenedCredential:
    """A credential ready for a job; `value` shows as `**********` in reprs and logs."""

    name: str
    provider: GitProvider
    credential_type: GitCredentialType
    value: SecretStr


def _bound_to(user_id: UUID, name: str) -> bytes:
    """The associated data of a credential's ciphertext: its owner and its name."""
    return b"ckrv git credential\x00" + user_id.bytes + name.encode()


async def store_credential(
    session: AsyncSession,
    keys: KeyRing,
    user_id: UUID,
    *,
    name: str,
    provider: GitProvider,
    credential_type: GitCredentialType,
    value: SecretStr,
) -> GitCredential | None:
    """The new credential, sealed under the ring's first key; None if the name is taken."""
    sealed = keys.seal(value.get_secret_value().encode(), _bound_to(user_id, name))
    stored = await session.scalar(
        insert(GitCredential)
        .values(
            id=uuid4(),
            user_id=user_id,
            name=name,
            provider=provider.value,
            credential_type=credential_type.value,
            key_id=sealed.key_id,
            ciphertext=sealed.ciphertext,
            created_at=_utc_now(),
        )
        # A concurrent request for the same name gets the same answer as a later one.
        .on_conflict_do_nothing(index_elements=["user_id", "name"])
        .returning(GitCredential)
    )
    return stored


async def list_credentials(session: AsyncSession, user_id: UUID) -> list[GitCredential]:
    """The user's credentials by name."""
    found = await session.scalars(
        select(GitCredential)
        .where(col(GitCredential.user_id) == user_id)
        .order_by(col(GitCredential.name))
    )
    return list(found.all())


async def remove_credential(session: AsyncSession, user_id: UUID, name: str) -> bool:
    """Delete the user's credential `name`; False if there was none."""
    removed = await session.execute(
        delete(GitCredential)
        .where(col(GitCredential.user_id) == user_id, col(GitCredential.name) == name)
        .returning(col(GitCredential.id))
    )
    return removed.first() is not None


async def open_credential(
    session: AsyncSession, keys: KeyRing, user_id: UUID, name: str
) -> OpenedCredential | None:
    """The user's credential `name` decrypted, or None if it does not exist.

    Marks it used now (`last_used_at`) in the session's transaction, which the caller
    commits. `UnsealError` if it does not open: its key is not in `keys`, or the row's
    bytes were altered or belong to another owner or name.
    """
    row = (
        await session.execute(
            update(GitCredential)
            .where(col(GitCredential.user_id) == user_id, col(GitCredential.name) == name)
            .values(last_used_at=_utc_now())
            .returning(
                col(GitCredential.provider),
                col(GitCredential.credential_type),
                col(GitCredential.key_id),
                col(GitCredential.ciphertext),
            )
        )
    ).first()
    if row is None:
        return None
    provider, credential_type, key_id, ciphertext = row
    try:
        value = keys.open(Sealed(key_id, ciphertext), _bound_to(user_id, name))
    except UnsealError as error:
        raise UnsealError(f"git credential {name!r} of user {user_id}: {error}") from None
    return OpenedCredential(
        name=name,
        provider=GitProvider(provider),
        credential_type=GitCredentialType(credential_type),
        value=SecretStr(value.decode()),
    )
