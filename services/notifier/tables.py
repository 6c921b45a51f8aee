"""The webhook tables: users' endpoints, the messages sent to them, and each delivery's state.

The gateway writes endpoints (and pings and redeliveries); the notifier records a
delivery per matching endpoint when a job event comes, then works through the
deliveries that are due. A pending delivery's next attempt time lives in its row,
so a restarted notifier carries on where the last one stopped.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from sqlalchemy import Column, Index, String, Text, UniqueConstraint, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlmodel import Field, SQLModel

from ckrv.schemas.webhooks import DeliveryStatus
from ckrv.services.gateway.tables import timestamp_field


class WebhookEndpoint(SQLModel, table=True):
    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index("webhook_endpoints_by_owner", "user_id", "created_at"),)

    id: UUID = Field(primary_key=True)
    user_id: UUID
    url: str
    event_types: list[str] = Field(sa_column=Column(ARRAY(String(50)), nullable=False))
    description: str = ""
    enabled: bool = True
    disabled_reason: str | None = Field(default=None, max_length=20)
    consecutive_failures: int = 0
    # The signing secret, sealed (`signing.seal_secret`); the previous one signs too until
    # it expires, after a rotation.
    secret_key_id: str = Field(max_length=50)
    secret_ciphertext: bytes
    previous_secret_key_id: str | None = Field(default=None, max_length=50)
    previous_secret_ciphertext: bytes | None = None
    previous_secret_expires_at: datetime | None = timestamp_field(nullable=True)
    created_at: datetime = timestamp_field()
    updated_at: datetime = timestamp_field()


class WebhookMessage(SQLModel, table=True):
    """What is sent: one per job event (or ping), whichever endpoints it goes to."""

    __tablename__ = "webhook_messages"

    id: UUID = Field(primary_key=True, description="The event id: the `webhook-id` header.")
    event_type: str = Field(max_length=50)
    # The exact body every attempt sends and signs.
    body: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = timestamp_field()


class WebhookDelivery(SQLModel, table=True):
    """One message to one endpoint, until it succeeded or its retries ran out."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("endpoint_id", "message_id"),
        Index("webhook_deliveries_by_endpoint", "endpoint_id", "id"),
        Index(
            "webhook_deliveries_due",
            "next_attempt_at",
            postgresql_where=text(f"status = '{DeliveryStatus.PENDING.value}'"),
        ),
    )

    id: UUID = Field(primary_key=True)
    endpoint_id: UUID = Field(foreign_key="webhook_endpoints.id", ondelete="CASCADE")
    message_id: UUID = Field(foreign_key="webhook_messages.id")
    status: str = Field(default=DeliveryStatus.PENDING.value, max_length=20)
    # Every attempt made, counted when it starts (so one cut short by a crash counts too).
    attempts: int = 0
    # Failed attempts since the delivery was recorded or redelivered: the place in the
    # retry schedule.
    failures: int = 0
    next_attempt_at: datetime | None = timestamp_field(nullable=True)
    last_attempt_at: datetime | None = timestamp_field(nullable=True)
    status_code: int | None = None
    latency_ms: float | None = None
    error: str | None = None
    delivered_at: datetime | None = timestamp_field(nullable=True)
    created_at: datetime = timestamp_field()
