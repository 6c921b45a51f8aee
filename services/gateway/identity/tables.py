"""Sign-in state in PostgreSQL. Every secret is stored as its SHA-256 hash, never as itself."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from sqlmodel import Field, SQLModel

from ckrv.services.gateway.tables import timestamp_field


class DeviceAuthorization(SQLModel, table=True):
    """A device-flow request: the CLI polls with the device code, the user enters the user code."""

    __tablename__ = "device_authorizations"

    device_code_hash: str = Field(primary_key=True, max_length=64)
    # Stored without the dash, upper case: what the user types is normalised the same way.
    user_code: str = Field(unique=True, max_length=16)
    client_id: str = Field(max_length=100)
    scope: str = Field(default="jobs", max_length=200)
    created_at: datetime = timestamp_field()
    expires_at: datetime = timestamp_field()
    interval_seconds: int
    last_polled_at: datetime | None = timestamp_field(nullable=True)
    # pending → approved | denied → consumed (tokens issued once)
    status: str = Field(default="pending", max_length=20)
    user_id: UUID | None = None


class RefreshToken(SQLModel, table=True):
    """A refresh token; each use replaces it with a new one of the same family."""

    __tablename__ = "refresh_tokens"

    token_hash: str = Field(primary_key=True, max_length=64)
    family_id: UUID = Field(index=True)
    user_id: UUID = Field(index=True)
    client_id: str = Field(max_length=100)
    created_at: datetime = timestamp_field()
    expires_at: datetime = timestamp_field()
    used_at: datetime | None = timestamp_field(nullable=True)
    revoked_at: datetime | None = timestamp_field(nullable=True)


class ApiToken(SQLModel, table=True):
    """A long-lived token for scripts and CI, shown once at creation."""

    __tablename__ = "api_tokens"

    id: UUID = Field(primary_key=True)
    user_id: UUID = Field(index=True)
    name: str = Field(max_length=100)
    token_hash: str = Field(unique=True, max_length=64)
    # The first characters, so users can tell their tokens apart in a list.
    display_prefix: str = Field(max_length=16)
    created_at: datetime = timestamp_field()
    expires_at: datetime | None = timestamp_field(nullable=True)
    last_used_at: datetime | None = timestamp_field(nullable=True)
    revoked_at: datetime | None = timestamp_field(nullable=True)


class LocalAccount(SQLModel, table=True):
    """Password sign-in for a user (the embedded stack); OpenID users have no row here."""

    __tablename__ = "local_accounts"

    user_id: UUID = Field(primary_key=True)
    password_hash: str = Field(max_length=300)
    created_at: datetime = timestamp_field()


class UpstreamIdentity(SQLModel, table=True):
    """A user's account at an upstream OpenID Connect provider: (issuer, subject) → user."""

    __tablename__ = "upstream_identities"

    issuer: str = Field(primary_key=True, max_length=300)
    subject: str = Field(primary_key=True, max_length=255)
    user_id: UUID = Field(index=True)
    created_at: datetime = timestamp_field()
