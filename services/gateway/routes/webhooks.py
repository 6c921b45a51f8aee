"""`/v1/webhooks`: endpoints that hear about their owner's job events, and their deliveries.

The notifier service sends the deliveries; here they are configured, listed,
pinged and sent again. A signing secret is shown when made (at creation and on
rotation) and sealed at rest with the credential key ring.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Annotated, Any
from uuid import UUID, uuid4

from fastapi import APIRouter, Query, Response, status
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from ckrv.events.envelope import utc_now
from ckrv.schemas.webhooks import (
    TERMINAL_EVENT_TYPES,
    DeliveryStatus,
    DisabledReason,
    WebhookCreate,
    WebhookCreated,
    WebhookDeliveriesPublic,
    WebhookDeliveryPublic,
    WebhookPublic,
    WebhookSecretPublic,
    WebhooksPublic,
    WebhookUpdate,
)
from ckrv.services.common.settings import Environment
from ckrv.services.gateway.auth import CurrentUser
from ckrv.services.gateway.context import ContextDep, GatewayContext, SessionDep
from ckrv.services.gateway.errors import ApiError, not_found
from ckrv.services.gateway.tables import User
from ckrv.services.notifier.addresses import WebhookUrlError, check_webhook_url
from ckrv.services.notifier.deliveries import record_deliveries
from ckrv.services.notifier.messages import ping_message
from ckrv.services.notifier.settings import WebhookSettings
from ckrv.services.notifier.signing import new_signing_secret, seal_secret
from ckrv.services.notifier.tables import WebhookDelivery, WebhookEndpoint, WebhookMessage

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/webhooks", tags=["Webhooks"])

MAX_WEBHOOKS_PER_USER = 100

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or invalid token (`unauthorized`)."},
    404: {"description": "No such webhook (or delivery) for this user (`not_found`)."},
    422: {"description": "Invalid input (`validation_error`), with `details` per field."},
}
URL_ERRORS: dict[int | str, dict[str, Any]] = {
    422: {
        "description": "Invalid input (`validation_error`), or a URL webhooks may not go to "
        "(`webhook_url_not_allowed`): in the cloud only https on public addresses."
    }
}
DISABLED_ERROR: dict[int | str, dict[str, Any]] = {
    409: {"description": "The webhook is disabled (`webhook_disabled`); enable it first."}
}


def _public(endpoint: WebhookEndpoint) -> WebhookPublic:
    return WebhookPublic.model_validate(endpoint, from_attributes=True)


def _delivery_public(delivery: WebhookDelivery, event_type: str) -> WebhookDeliveryPublic:
    return WebhookDeliveryPublic.model_validate(
        {**delivery.model_dump(), "event_id": delivery.message_id, "event_type": event_type}
    )


async def _owned(session: AsyncSession, user: User, webhook_id: UUID) -> WebhookEndpoint:
    """The endpoint if `user` owns it; anyone else's is as absent as a missing one."""
    endpoint = await session.get(WebhookEndpoint, webhook_id)
    if endpoint is None or endpoint.user_id != user.id:
        raise not_found(f"webhook {webhook_id}")
    return endpoint


async def _allowed_url(context: GatewayContext, url: str) -> str:
    try:
        await check_webhook_url(url, cloud=context.settings.env is not Environment.DEV)
    except WebhookUrlError as error:
        raise ApiError(
            422,
            "webhook_url_not_allowed",
            f"url: {error}",
            details=[{"field": "url", "message": str(error)}],
        ) from None
    return url.strip()


def _enabled_for_use(endpoint: WebhookEndpoint) -> None:
    if not endpoint.enabled:
        raise ApiError(
            409,
            "webhook_disabled",
            f"webhook {endpoint.id} is disabled ({endpoint.disabled_reason}); "
            "enable it first (PATCH with enabled: true)",
            disabled_reason=endpoint.disabled_reason,
        )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=WebhookCreated,
    responses={
        **ERRORS,
        **URL_ERRORS,
        409: {
            "description": f"The user has {MAX_WEBHOOKS_PER_USER} webhooks already "
            "(`webhook_limit_reached`)."
        },
    },
)
async def create_webhook(
    body: WebhookCreate,
    user: CurrentUser,
    context: ContextDep,
    session: SessionDep,
    response: Response,
) -> WebhookCreated:
    """Add an endpoint; the answer holds its signing secret, which is never shown again."""
    url = await _allowed_url(context, body.url)
    secret = new_signing_secret()
    endpoint_id = uuid4()
    sealed = seal_secret(context.credential_keys, endpoint_id, secret)
    now = utc_now()
    async with session.begin():
        # The owner's row held while counting, so two requests cannot both take the last place.
        await session.execute(select(col(User.id)).where(col(User.id) == user.id).with_for_update())
        count = await session.scalar(
            select(func.count()).where(col(WebhookEndpoint.user_id) == user.id)
        )
        if (count or 0) >= MAX_WEBHOOKS_PER_USER:
            raise ApiError(
                409,
                "webhook_limit_reached",
                f"you have {MAX_WEBHOOKS_PER_USER} webhooks, the most there can be; "
                "remove one first",
            )
        endpoint = WebhookEndpoint(
            id=endpoint_id,
            user_id=user.id,
            url=url,
            event_types=body.event_types or list(TERMINAL_EVENT_TYPES),
            description=body.description,
            enabled=body.enabled,
            disabled_reason=None if body.enabled else DisabledReason.BY_OWNER.value,
            secret_key_id=sealed.key_id,
            secret_ciphertext=sealed.ciphertext,
            created_at=now,
            updated_at=now,
        )
        session.add(endpoint)
    logger.info("webhook created", extra={"user_id": str(user.id), "webhook_id": str(endpoint_id)})
    response.headers["Location"] = f"/v1/webhooks/{endpoint_id}"
    return WebhookCreated(**_public(endpoint).model_dump(), secret=secret)


@router.get("", response_model=WebhooksPublic, responses=ERRORS)
async def list_webhooks(user: CurrentUser, session: SessionDep) -> WebhooksPublic:
    """The user's webhooks, oldest first, without their secrets."""
    endpoints = await session.scalars(
        select(WebhookEndpoint)
        .where(col(WebhookEndpoint.user_id) == user.id)
        .order_by(col(WebhookEndpoint.created_at), col(WebhookEndpoint.id))
    )
    return WebhooksPublic(webhooks=[_public(endpoint) for endpoint in endpoints])


@router.get("/{webhook_id}", response_model=WebhookPublic, responses=ERRORS)
async def get_webhook(webhook_id: UUID, user: CurrentUser, session: SessionDep) -> WebhookPublic:
    """One webhook, without its secret."""
    return _public(await _owned(session, user, webhook_id))


@router.patch("/{webhook_id}", response_model=WebhookPublic, responses={**ERRORS, **URL_ERRORS})
async def update_webhook(
    webhook_id: UUID,
    body: WebhookUpdate,
    user: CurrentUser,
    context: ContextDep,
    session: SessionDep,
) -> WebhookPublic:
    """Change a webhook's URL, event types, description, or whether it is enabled."""
    url = await _allowed_url(context, body.url) if body.url is not None else None
    async with session.begin():
        endpoint = await _owned(session, user, webhook_id)
        if url is not None:
            endpoint.url = url
        if body.event_types is not None:
            endpoint.event_types = body.event_types
        if body.description is not None:
            endpoint.description = body.description
        if body.enabled is True and not endpoint.enabled:
            # A fresh start: the failures that disabled it no longer count.
            endpoint.enabled = True
            endpoint.disabled_reason = None
            endpoint.consecutive_failures = 0
        elif body.enabled is False and endpoint.enabled:
            endpoint.enabled = False
            endpoint.disabled_reason = DisabledReason.BY_OWNER.value
        endpoint.updated_at = utc_now()
    return _public(endpoint)


@router.delete(
    "/{webhook_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=ERRORS,
)
async def delete_webhook(webhook_id: UUID, user: CurrentUser, session: SessionDep) -> None:
    """Remove a webhook and its deliveries; nothing more is sent to it."""
    async with session.begin():
        await session.delete(await _owned(session, user, webhook_id))
    logger.info("webhook removed", extra={"user_id": str(user.id), "webhook_id": str(webhook_id)})


@router.post("/{webhook_id}/rotate-secret", response_model=WebhookSecretPublic, responses=ERRORS)
async def rotate_secret(
    webhook_id: UUID, user: CurrentUser, context: ContextDep, session: SessionDep
) -> WebhookSecretPublic:
    """Make a new signing secret, shown this once.

    Deliveries are signed with the previous secret as well for 24 hours, so receivers
    can move to the new one without refusing any; an earlier previous secret is dropped.
    """
    grace = timedelta(seconds=WebhookSettings().previous_secret_grace_seconds)
    secret = new_signing_secret()
    sealed = seal_secret(context.credential_keys, webhook_id, secret)
    now = utc_now()
    async with session.begin():
        endpoint = await _owned(session, user, webhook_id)
        endpoint.previous_secret_key_id = endpoint.secret_key_id
        endpoint.previous_secret_ciphertext = endpoint.secret_ciphertext
        endpoint.previous_secret_expires_at = now + grace
        endpoint.secret_key_id = sealed.key_id
        endpoint.secret_ciphertext = sealed.ciphertext
        endpoint.updated_at = now
    logger.info(
        "webhook secret rotated", extra={"user_id": str(user.id), "webhook_id": str(webhook_id)}
    )
    return WebhookSecretPublic(secret=secret, previous_secret_valid_until=now + grace)


@router.get(
    "/{webhook_id}/deliveries",
    response_model=WebhookDeliveriesPublic,
    responses=ERRORS,
)
async def list_deliveries(
    webhook_id: UUID,
    *,
    user: CurrentUser,
    session: SessionDep,
    delivery_status: Annotated[DeliveryStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[
        UUID | None, Query(description="The `next_cursor` of the previous page.")
    ] = None,
) -> WebhookDeliveriesPublic:
    """The webhook's deliveries, newest first: attempts, latest answer, next retry."""
    await _owned(session, user, webhook_id)
    query = (
        select(WebhookDelivery, col(WebhookMessage.event_type))
        .join(WebhookMessage, col(WebhookMessage.id) == col(WebhookDelivery.message_id))
        .where(col(WebhookDelivery.endpoint_id) == webhook_id)
    )
    if delivery_status is not None:
        query = query.where(col(WebhookDelivery.status) == delivery_status.value)
    if cursor is not None:
        # Delivery ids grow with time (uuid7): the id alone is the position.
        query = query.where(col(WebhookDelivery.id) < cursor)
    rows = (
        await session.execute(query.order_by(col(WebhookDelivery.id).desc()).limit(limit + 1))
    ).all()
    page = rows[:limit]
    return WebhookDeliveriesPublic(
        deliveries=[_delivery_public(delivery, event_type) for delivery, event_type in page],
        next_cursor=str(page[-1][0].id) if len(rows) > limit else None,
    )


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/redeliver",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=WebhookDeliveryPublic,
    responses={**ERRORS, **DISABLED_ERROR},
)
async def redeliver(
    webhook_id: UUID, delivery_id: UUID, user: CurrentUser, session: SessionDep
) -> WebhookDeliveryPublic:
    """Send a delivery again, now, with its retries afresh; the same `webhook-id` as before."""
    async with session.begin():
        _enabled_for_use(await _owned(session, user, webhook_id))
        found = (
            await session.execute(
                update(WebhookDelivery)
                .where(
                    col(WebhookDelivery.id) == delivery_id,
                    col(WebhookDelivery.endpoint_id) == webhook_id,
                )
                .values(status=DeliveryStatus.PENDING.value, failures=0, next_attempt_at=utc_now())
                .returning(WebhookDelivery)
            )
        ).scalar_one_or_none()
        if found is None:
            raise not_found(f"delivery {delivery_id} of webhook {webhook_id}")
        event_type = await session.scalar(
            select(col(WebhookMessage.event_type)).where(col(WebhookMessage.id) == found.message_id)
        )
    assert event_type is not None
    return _delivery_public(found, event_type)


@router.post(
    "/{webhook_id}/test",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=WebhookDeliveryPublic,
    responses={**ERRORS, **DISABLED_ERROR},
)
async def test_webhook(
    webhook_id: UUID, user: CurrentUser, session: SessionDep
) -> WebhookDeliveryPublic:
    """Send a `webhook.ping` event to the webhook; follow it in its deliveries."""
    now = utc_now()
    async with session.begin():
        _enabled_for_use(await _owned(session, user, webhook_id))
        message = ping_message(webhook_id, now)
        (delivery_id,) = await record_deliveries(session, message, [webhook_id], now)
        delivery = await session.get(WebhookDelivery, delivery_id)
    assert delivery is not None
    return _delivery_public(delivery, message.event_type)
