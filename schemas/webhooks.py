"""Bodies of `/v1/webhooks`: endpoints that hear about job events, and their deliveries.

A delivery follows the Standard Webhooks specification: the body is
`{type, timestamp, data}` with `data` the job as `GET /v1/jobs/{id}` shows it,
and the headers `webhook-id`, `webhook-timestamp` and `webhook-signature` sign it
with the endpoint's secret.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ckrv.events.catalog import EVENT_TYPES

# What an endpoint hears about unless it names other types: a job's end, whichever it is.
TERMINAL_EVENT_TYPES = (
    "job.succeeded",
    "job.failed",
    "job.timed-out",
    "job.cancelled",
    "job.rejected",
)
# The event `POST /v1/webhooks/{id}/test` sends; it is never a job's.
PING_EVENT_TYPE = "webhook.ping"
SUBSCRIBABLE_EVENT_TYPES = tuple(EVENT_TYPES)
MAX_URL_LENGTH = 2048
MAX_DESCRIPTION_LENGTH = 500


class DisabledReason(enum.StrEnum):
    """Why an endpoint stopped receiving: its owner's choice, or the notifier's."""

    BY_OWNER = "by_owner"
    GONE = "gone"
    """The endpoint answered 410 Gone."""
    FAILING = "failing"
    """Too many attempts in a row failed."""


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


def _known_event_types(event_types: list[str] | None) -> list[str] | None:
    if event_types is None:
        return None
    if not event_types:
        raise ValueError("name at least one event type, or leave it out for a job's end")
    unknown = sorted(set(event_types) - set(SUBSCRIBABLE_EVENT_TYPES))
    if unknown:
        raise ValueError(
            f"unknown event type(s) {', '.join(unknown)}; "
            f"known: {', '.join(SUBSCRIBABLE_EVENT_TYPES)}"
        )
    # Each once, in the catalog's order: the same subscription always reads the same.
    return [event_type for event_type in SUBSCRIBABLE_EVENT_TYPES if event_type in event_types]


class WebhookCreate(BaseModel):
    """An endpoint to deliver job events to."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        max_length=MAX_URL_LENGTH,
        description="Where deliveries are POSTed: https, on a public address (on a local "
        "development stack http and loopback addresses are allowed too).",
    )
    event_types: list[str] | None = Field(
        default=None,
        description="Job event types to deliver, e.g. `job.succeeded`; "
        "by default a job's end: " + ", ".join(f"`{name}`" for name in TERMINAL_EVENT_TYPES) + ".",
    )
    description: str = Field(default="", max_length=MAX_DESCRIPTION_LENGTH)
    enabled: bool = True

    _event_types_known = field_validator("event_types")(_known_event_types)


class WebhookUpdate(BaseModel):
    """Changes to an endpoint; fields left out stay as they are."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(default=None, max_length=MAX_URL_LENGTH)
    event_types: list[str] | None = None
    description: str | None = Field(default=None, max_length=MAX_DESCRIPTION_LENGTH)
    enabled: bool | None = Field(
        default=None,
        description="`true` re-enables an endpoint the notifier disabled, and clears its "
        "failure count.",
    )

    _event_types_known = field_validator("event_types")(_known_event_types)

    @field_validator("url", "description", "enabled")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        # Left out means unchanged; null would mean nothing sensible.
        if value is None:
            raise ValueError("may be left out, but not null")
        return value


class WebhookPublic(BaseModel):
    """An endpoint as its owner sees it; its secret is shown only when made."""

    id: UUID
    url: str
    event_types: list[str]
    description: str
    enabled: bool
    disabled_reason: DisabledReason | None = Field(
        description="Why it is disabled: `by_owner`, `gone` (it answered 410) or `failing` "
        "(20 attempts in a row failed); null while enabled."
    )
    consecutive_failures: int = Field(description="Failed attempts since the last success.")
    created_at: datetime
    updated_at: datetime


class WebhookCreated(WebhookPublic):
    secret: str = Field(
        description="The signing secret (`whsec_…`), shown this once; "
        "`POST /v1/webhooks/{id}/rotate-secret` makes a new one."
    )


class WebhooksPublic(BaseModel):
    webhooks: list[WebhookPublic] = Field(description="Oldest first.")


class WebhookSecretPublic(BaseModel):
    secret: str = Field(description="The new signing secret (`whsec_…`), shown this once.")
    previous_secret_valid_until: datetime = Field(
        description="Until then deliveries carry a signature by the previous secret as well."
    )


class WebhookPayload(BaseModel):
    """The JSON body of every delivery."""

    type: str = Field(description="The event's type: `job.succeeded`, …, or `webhook.ping`.")
    timestamp: datetime = Field(description="When the event happened.")
    data: dict[str, Any] = Field(
        description="For a job event, the job as `GET /v1/jobs/{id}` shows it just after the "
        "event; for a ping, `webhook_id`."
    )


class WebhookDeliveryPublic(BaseModel):
    """One event sent (or to be sent) to one endpoint, with its latest attempt."""

    id: UUID
    event_id: UUID = Field(description="The `webhook-id` header: the same on every attempt.")
    event_type: str
    status: DeliveryStatus
    attempts: int
    status_code: int | None = Field(description="The latest attempt's HTTP status.")
    latency_ms: float | None = Field(description="How long the latest attempt took.")
    error: str | None = Field(description="Why the latest attempt failed.")
    next_attempt_at: datetime | None = Field(description="When it is tried next, while pending.")
    last_attempt_at: datetime | None
    delivered_at: datetime | None
    created_at: datetime


class WebhookDeliveriesPublic(BaseModel):
    deliveries: list[WebhookDeliveryPublic] = Field(description="Newest first.")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null at end.")
