"""Deliveries in PostgreSQL: recording them, claiming the due ones, recording how attempts went.

A claim is a lease: the claimed delivery's next attempt time moves past the
attempt's timeout, and its attempt count goes up. A notifier that dies while
sending leaves the lease to run out, and the delivery is sent again then. An
outcome is recorded only by the attempt that still holds the lease (neither the
count nor the time has moved on: no later claim, no redelivery meanwhile), so a
late one changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import uuid_utils
from sqlalchemy import (
    ARRAY,
    Boolean,
    DateTime,
    Float,
    Integer,
    String,
    Text,
    Uuid,
    bindparam,
    exists,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from ckrv.schemas.webhooks import DeliveryStatus, DisabledReason, WebhookPayload
from ckrv.services.common.sealing import Sealed
from ckrv.services.notifier.policy import (
    AttemptOutcome,
    NextStep,
    failing_endpoint,
    failure_counts,
)
from ckrv.services.notifier.tables import WebhookDelivery, WebhookEndpoint, WebhookMessage

_PENDING = DeliveryStatus.PENDING.value


def new_delivery_id() -> UUID:
    return UUID(str(uuid_utils.uuid7()))


def message_body(event_type: str, timestamp: datetime, data: Mapping[str, Any]) -> str:
    """The JSON every attempt of a message sends: `{type, timestamp, data}`."""
    return WebhookPayload(type=event_type, timestamp=timestamp, data=dict(data)).model_dump_json()


async def anyone_subscribed(session: AsyncSession, event_type: str) -> bool:
    """Whether any enabled endpoint, of any user, takes events of this type."""
    listening = await session.scalar(
        select(
            exists().where(
                col(WebhookEndpoint.enabled),
                col(WebhookEndpoint.event_types).contains([event_type]),
            )
        )
    )
    return bool(listening)


async def subscribed_endpoints(
    session: AsyncSession, user_id: UUID, event_type: str, occurred_at: datetime
) -> list[UUID]:
    """The user's enabled endpoints that take the event: of its type, and made before it."""
    found = await session.scalars(
        select(col(WebhookEndpoint.id)).where(
            col(WebhookEndpoint.user_id) == user_id,
            col(WebhookEndpoint.enabled),
            col(WebhookEndpoint.event_types).contains([event_type]),
            # An endpoint hears of what happens from its making on, even when the notifier
            # reads older events only now.
            col(WebhookEndpoint.created_at) <= occurred_at,
        )
    )
    return list(found)


async def record_deliveries(
    session: AsyncSession, message: WebhookMessage, endpoint_ids: Sequence[UUID], now: datetime
) -> list[UUID]:
    """The message, and a delivery of it to each endpoint, due now; the new deliveries' ids.

    Recording the same message for the same endpoint again adds nothing.
    """
    await session.execute(
        insert(WebhookMessage)
        .values(
            id=message.id,
            event_type=message.event_type,
            body=message.body,
            created_at=message.created_at,
        )
        .on_conflict_do_nothing(index_elements=["id"])
    )
    if not endpoint_ids:
        return []
    recorded = await session.scalars(
        insert(WebhookDelivery)
        .values(
            [
                {
                    "id": new_delivery_id(),
                    "endpoint_id": endpoint_id,
                    "message_id": message.id,
                    "status": _PENDING,
                    "attempts": 0,
                    "failures": 0,
                    "next_attempt_at": now,
                    "created_at": now,
                }
                for endpoint_id in endpoint_ids
            ]
        )
        .on_conflict_do_nothing(index_elements=["endpoint_id", "message_id"])
        .returning(col(WebhookDelivery.id))
    )
    return list(recorded)


@dataclass(frozen=True)
class DueDelivery:
    """A claimed delivery, with what its attempt sends."""

    id: UUID
    endpoint_id: UUID
    attempt: int
    """This attempt's number; the outcome is recorded only while the row still has it."""
    lease_until: datetime
    """The next attempt time the claim set; the outcome is recorded only while it holds."""
    failures: int
    url: str
    secrets: tuple[Sealed, ...]
    """The current secret first, then the previous one while it is still valid."""
    message_id: UUID
    body: str


async def claim_due(
    session: AsyncSession,
    *,
    now: datetime,
    lease_until: datetime,
    capacity: int,
    free_by_endpoint: Mapping[UUID, int],
    per_endpoint: int,
) -> list[DueDelivery]:
    """Claim up to `capacity` due deliveries of enabled endpoints, the oldest first.

    An endpoint gets at most `free_by_endpoint[id]` (`per_endpoint` if absent), so one
    that is slow to answer never holds more than its share of the attempts in flight.
    """
    saturated = [endpoint for endpoint, free in free_by_endpoint.items() if free <= 0]
    place = (
        func.row_number()
        .over(
            partition_by=col(WebhookDelivery.endpoint_id),
            order_by=(col(WebhookDelivery.next_attempt_at), col(WebhookDelivery.id)),
        )
        .label("place")
    )
    due = (
        select(
            col(WebhookDelivery.id),
            col(WebhookDelivery.endpoint_id),
            col(WebhookDelivery.next_attempt_at),
            place,
        )
        .join(WebhookEndpoint, col(WebhookEndpoint.id) == col(WebhookDelivery.endpoint_id))
        .where(
            col(WebhookDelivery.status) == _PENDING,
            col(WebhookDelivery.next_attempt_at) <= now,
            col(WebhookEndpoint.enabled),
            col(WebhookDelivery.endpoint_id).not_in(saturated),
        )
        .subquery()
    )
    candidates = (
        await session.execute(
            select(due.c.id, due.c.endpoint_id)
            .where(due.c.place <= per_endpoint)
            .order_by(due.c.next_attempt_at)
            .limit(capacity)
        )
    ).all()
    chosen: list[UUID] = []
    taken: dict[UUID, int] = {}
    for delivery_id, endpoint_id in candidates:
        if taken.get(endpoint_id, 0) < free_by_endpoint.get(endpoint_id, per_endpoint):
            taken[endpoint_id] = taken.get(endpoint_id, 0) + 1
            chosen.append(delivery_id)
    if not chosen:
        return []
    # Conditional on still being due: a delivery another notifier claimed meanwhile is not.
    claimed = (
        await session.execute(
            update(WebhookDelivery)
            .where(
                col(WebhookDelivery.id).in_(chosen),
                col(WebhookDelivery.status) == _PENDING,
                col(WebhookDelivery.next_attempt_at) <= now,
            )
            .values(attempts=col(WebhookDelivery.attempts) + 1, next_attempt_at=lease_until)
            .returning(
                col(WebhookDelivery.id),
                col(WebhookDelivery.endpoint_id),
                col(WebhookDelivery.attempts),
                col(WebhookDelivery.failures),
                col(WebhookDelivery.message_id),
            )
        )
    ).all()
    if not claimed:
        return []
    endpoints = {
        endpoint.id: endpoint
        for endpoint in await session.scalars(
            select(WebhookEndpoint).where(
                col(WebhookEndpoint.id).in_({row.endpoint_id for row in claimed})
            )
        )
    }
    messages = await session.execute(
        select(col(WebhookMessage.id), col(WebhookMessage.body)).where(
            col(WebhookMessage.id).in_({row.message_id for row in claimed})
        )
    )
    bodies = {message.id: message.body for message in messages}
    return [
        DueDelivery(
            id=row.id,
            endpoint_id=row.endpoint_id,
            attempt=row.attempts,
            lease_until=lease_until,
            failures=row.failures,
            url=endpoints[row.endpoint_id].url,
            secrets=signing_secrets(endpoints[row.endpoint_id], now),
            message_id=row.message_id,
            body=bodies[row.message_id],
        )
        for row in claimed
    ]


def signing_secrets(endpoint: WebhookEndpoint, now: datetime) -> tuple[Sealed, ...]:
    """The endpoint's sealed secrets that sign now: the current one, and a recent previous."""
    current = Sealed(endpoint.secret_key_id, endpoint.secret_ciphertext)
    if (
        endpoint.previous_secret_key_id is not None
        and endpoint.previous_secret_ciphertext is not None
        and endpoint.previous_secret_expires_at is not None
        and endpoint.previous_secret_expires_at > now
    ):
        previous = Sealed(endpoint.previous_secret_key_id, endpoint.previous_secret_ciphertext)
        return (current, previous)
    return (current,)


async def next_due_at(session: AsyncSession, excluded_endpoints: Sequence[UUID]) -> datetime | None:
    """When the earliest pending delivery of an enabled endpoint not excluded is due."""
    earliest: datetime | None = await session.scalar(
        select(func.min(col(WebhookDelivery.next_attempt_at)))
        .join(WebhookEndpoint, col(WebhookEndpoint.id) == col(WebhookDelivery.endpoint_id))
        .where(
            col(WebhookDelivery.status) == _PENDING,
            col(WebhookEndpoint.enabled),
            col(WebhookDelivery.endpoint_id).not_in(excluded_endpoints),
        )
    )
    return earliest


@dataclass(frozen=True)
class FinishedAttempt:
    due: DueDelivery
    outcome: AttemptOutcome
    step: NextStep
    ended_at: datetime


@dataclass(frozen=True)
class RecordedAttempts:
    lost: list[FinishedAttempt]
    """Those that had lost their lease (another attempt or a redelivery took over): not
    written, and not counted against their endpoints."""
    disabled: dict[UUID, DisabledReason]
    """The endpoints these attempts disabled, and why."""


# One statement for any number of attempts: each delivery's outcome, written only while the
# attempt still holds its lease.
_RECORD_OUTCOMES = (
    text(
        "UPDATE webhook_deliveries AS d SET status = v.status,"
        " next_attempt_at = v.next_attempt_at, last_attempt_at = v.ended_at,"
        " status_code = v.status_code, latency_ms = v.latency_ms, error = v.error,"
        " failures = d.failures + CASE WHEN v.succeeded THEN 0 ELSE 1 END,"
        " delivered_at = CASE WHEN v.succeeded THEN v.ended_at ELSE d.delivered_at END"
        " FROM unnest(:ids, :attempts, :leases, :statuses, :next_attempts, :ended,"
        " :status_codes, :latencies, :errors, :succeeded) AS v (id, attempt, lease, status,"
        " next_attempt_at, ended_at, status_code, latency_ms, error, succeeded)"
        " WHERE d.id = v.id AND d.attempts = v.attempt AND d.next_attempt_at = v.lease"
        " RETURNING d.id"
    )
    .bindparams(
        bindparam("ids", type_=ARRAY(Uuid())),
        bindparam("attempts", type_=ARRAY(Integer())),
        bindparam("leases", type_=ARRAY(DateTime(timezone=True))),
        bindparam("statuses", type_=ARRAY(String())),
        bindparam("next_attempts", type_=ARRAY(DateTime(timezone=True))),
        bindparam("ended", type_=ARRAY(DateTime(timezone=True))),
        bindparam("status_codes", type_=ARRAY(Integer())),
        bindparam("latencies", type_=ARRAY(Float())),
        bindparam("errors", type_=ARRAY(Text())),
        bindparam("succeeded", type_=ARRAY(Boolean())),
    )
    .columns(id=Uuid())
)
_COUNT_FAILURES = (
    text(
        "UPDATE webhook_endpoints AS e SET consecutive_failures = CASE WHEN v.restart"
        " THEN v.added ELSE e.consecutive_failures + v.added END"
        " FROM unnest(:ids, :restarts, :added) AS v (id, restart, added)"
        " WHERE e.id = v.id AND (v.added > 0 OR e.consecutive_failures > 0)"
        " RETURNING e.id, e.consecutive_failures"
    )
    .bindparams(
        bindparam("ids", type_=ARRAY(Uuid())),
        bindparam("restarts", type_=ARRAY(Boolean())),
        bindparam("added", type_=ARRAY(Integer())),
    )
    .columns(id=Uuid(), consecutive_failures=Integer())
)
_DISABLE = (
    text(
        "UPDATE webhook_endpoints AS e SET enabled = false, disabled_reason = v.reason,"
        " updated_at = :now FROM unnest(:ids, :reasons) AS v (id, reason)"
        " WHERE e.id = v.id AND e.enabled RETURNING e.id"
    )
    .bindparams(
        bindparam("ids", type_=ARRAY(Uuid())),
        bindparam("reasons", type_=ARRAY(String())),
        bindparam("now", type_=DateTime(timezone=True)),
    )
    .columns(id=Uuid())
)


async def record_attempts(
    session: AsyncSession,
    finished: Sequence[FinishedAttempt],
    *,
    disable_after_failures: int,
    now: datetime,
) -> RecordedAttempts:
    """Write attempts' outcomes to their deliveries and endpoints, in the session's transaction.

    `finished` in the order the attempts ended, which is the order their failures count in.
    """
    written = set(
        await session.scalars(
            _RECORD_OUTCOMES,
            {
                "ids": [f.due.id for f in finished],
                "attempts": [f.due.attempt for f in finished],
                "leases": [f.due.lease_until for f in finished],
                "statuses": [f.step.status.value for f in finished],
                "next_attempts": [f.step.next_attempt_at for f in finished],
                "ended": [f.ended_at for f in finished],
                "status_codes": [f.outcome.status_code for f in finished],
                "latencies": [round(f.outcome.latency_ms, 3) for f in finished],
                "errors": [f.outcome.error for f in finished],
                "succeeded": [f.outcome.succeeded for f in finished],
            },
        )
    )
    kept = [f for f in finished if f.due.id in written]
    counts = failure_counts((f.due.endpoint_id, f.outcome.succeeded) for f in kept)
    failing: dict[UUID, DisabledReason] = {}
    if counts:
        counted = await session.execute(
            _COUNT_FAILURES,
            {
                "ids": list(counts),
                "restarts": [count.restart for count in counts.values()],
                "added": [count.added for count in counts.values()],
            },
        )
        for row in counted:
            reason = failing_endpoint(row.consecutive_failures, disable_after_failures)
            if reason is not None:
                failing[row.id] = reason
    for f in kept:
        if f.step.disable_endpoint is not None:
            failing[f.due.endpoint_id] = f.step.disable_endpoint
    disabled: dict[UUID, DisabledReason] = {}
    if failing:
        disabled_ids = set(
            await session.scalars(
                _DISABLE,
                {
                    "ids": list(failing),
                    "reasons": [reason.value for reason in failing.values()],
                    "now": now,
                },
            )
        )
        disabled = {e: reason for e, reason in failing.items() if e in disabled_ids}
    return RecordedAttempts(
        lost=[f for f in finished if f.due.id not in written], disabled=disabled
    )
