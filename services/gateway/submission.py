"""Accepting a job: validation, idempotency, quota, and the outbox that guarantees its event.

One transaction records the accepted job (read-model row, quota charge,
idempotency key) together with its `job.submitted` event in the outbox. Only
after that commit is the event published; if the process dies in between, the
outbox relay publishes it later. So there is never an accepted job without its
event, nor an event without an accepted job.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from ckrv.events.catalog import JobSubmittedData, parse_event
from ckrv.events.publisher import EventPublisher
from ckrv.events.state import SubmitJob, decide, evolve, initial_state
from ckrv.schemas.api import JobCreate, SubscriptionTier
from ckrv.schemas.git import GitInputError, validate_branch_name, validate_repository_url
from ckrv.schemas.spec import SpecError, parse_spec
from ckrv.services.common.credentials import credential_exists
from ckrv.services.common.tiers import TIERS
from ckrv.services.gateway.context import GatewayContext
from ckrv.services.gateway.errors import ApiError, validation_error
from ckrv.services.gateway.projection import record_for
from ckrv.services.gateway.quota import usage
from ckrv.services.gateway.tables import (
    IdempotencyKey,
    JobRecord,
    OutboxEvent,
    QuotaCharge,
    User,
)

logger = logging.getLogger(__name__)

IDEMPOTENCY_WINDOW = timedelta(hours=24)
MAX_IDEMPOTENCY_KEY_LENGTH = 255
UNFINISHED_STATUSES = ("pending", "running")


@dataclass(frozen=True)
class Submission:
    job: JobRecord
    created: bool


def request_fingerprint(body: JobCreate) -> str:
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def validated_submission(body: JobCreate, *, allow_local: bool) -> str:
    """Check every field at the edge; returns the spec's id."""
    try:
        spec = parse_spec(body.spec_content)
    except SpecError as error:
        raise validation_error("spec_content", str(error)) from error
    try:
        validate_repository_url(body.git_repo_url, allow_local=allow_local)
    except GitInputError as error:
        raise validation_error("git_repo_url", str(error)) from error
    try:
        validate_branch_name(body.git_base_branch)
    except GitInputError as error:
        raise validation_error("git_base_branch", str(error)) from error
    if body.git_credential_name is not None and not body.git_credential_name.strip():
        raise validation_error("git_credential_name", "is empty")
    return spec.id


async def submit_job(
    context: GatewayContext, user: User, body: JobCreate, idempotency_key: str | None
) -> Submission:
    spec_id = validated_submission(body, allow_local=context.settings.allow_local_repositories)
    if idempotency_key is not None and not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY_LENGTH:
        raise validation_error("Idempotency-Key", "must be 1 to 255 characters")
    fingerprint = request_fingerprint(body)
    try:
        submission, outbox = await _accept(
            context,
            user,
            body=body,
            spec_id=spec_id,
            idempotency_key=idempotency_key,
            fingerprint=fingerprint,
        )
    except IntegrityError:
        # A concurrent request with the same key won the insert: answer as its replay.
        if idempotency_key is None:
            raise
        submission, outbox = await _accept(
            context,
            user,
            body=body,
            spec_id=spec_id,
            idempotency_key=idempotency_key,
            fingerprint=fingerprint,
        )
    if outbox is not None:
        await publish_outbox_event(context, outbox)
    return submission


async def _accept(
    context: GatewayContext,
    user: User,
    *,
    body: JobCreate,
    spec_id: str,
    idempotency_key: str | None,
    fingerprint: str,
) -> tuple[Submission, OutboxEvent | None]:
    now = datetime.now(UTC)
    async with context.sessions() as session, session.begin():
        # One submission of a user at a time: the quota check and charge cannot interleave.
        await session.execute(select(User).where(col(User.id) == user.id).with_for_update())
        if idempotency_key is not None:
            replay = await _replay(session, user.id, idempotency_key, fingerprint, now)
            if replay is not None:
                return Submission(replay, created=False), None
        if body.git_credential_name is not None and not await credential_exists(
            session, user.id, body.git_credential_name
        ):
            raise validation_error(
                "git_credential_name",
                f"no stored credential named {body.git_credential_name!r}; "
                "add it with `ckrv cloud credentials add`",
            )
        tier = SubscriptionTier(user.subscription_tier)
        limits = TIERS[tier]
        current = await usage(session, user.id, tier, now)
        overage = current.charged_jobs >= limits.included_jobs
        if overage and limits.overage_cents_per_job is None:
            raise ApiError(
                402,
                "quota_exceeded",
                f"the {tier} tier includes {limits.included_jobs} jobs a month, all used",
                quota_resets_at=current.cycle.end.isoformat(),
                upgrade_url=context.settings.upgrade_url,
            )
        await _check_unfinished_jobs(session, user.id, limits.unfinished_jobs)

        job_id = uuid4()
        (event,) = decide(
            initial_state(job_id),
            SubmitJob(
                actor=f"user:{user.id}",
                occurred_at=now,
                submission=JobSubmittedData(
                    user_id=str(user.id),
                    tier=tier,
                    spec_id=spec_id,
                    spec_content=body.spec_content,
                    git_repo_url=body.git_repo_url.strip(),
                    git_base_branch=body.git_base_branch,
                    git_credential_name=body.git_credential_name,
                    time_limit_seconds=limits.time_limit_seconds,
                    max_attempts=limits.max_attempts,
                ),
            ),
        )
        record = record_for(evolve(initial_state(job_id), event), last_sequence=0)
        outbox = OutboxEvent(event_id=event.id, job_id=job_id, payload=event.model_dump_json())
        session.add(record)
        session.add(outbox)
        session.add(
            QuotaCharge(
                job_id=job_id,
                user_id=user.id,
                cycle_start=current.cycle.start,
                overage=overage,
                amount_cents=(limits.overage_cents_per_job or 0) if overage else 0,
            )
        )
        if idempotency_key is not None:
            session.add(
                IdempotencyKey(
                    user_id=user.id,
                    key=idempotency_key,
                    request_hash=fingerprint,
                    job_id=job_id,
                    created_at=now,
                )
            )
    return Submission(record, created=True), outbox


async def _replay(
    session: AsyncSession, user_id: UUID, key: str, fingerprint: str, now: datetime
) -> JobRecord | None:
    stored = await session.get(IdempotencyKey, (user_id, key), with_for_update=True)
    if stored is None:
        return None
    if stored.created_at < now - IDEMPOTENCY_WINDOW:
        await session.delete(stored)
        await session.flush()
        return None
    if stored.request_hash != fingerprint:
        raise ApiError(
            409,
            "idempotency_conflict",
            "this Idempotency-Key was used for a different request in the last 24 hours",
            job_id=str(stored.job_id),
        )
    return await session.get(JobRecord, stored.job_id)


async def _check_unfinished_jobs(session: AsyncSession, user_id: UUID, limit: int) -> None:
    unfinished = await session.scalar(
        select(func.count()).where(
            col(JobRecord.user_id) == user_id, col(JobRecord.status).in_(UNFINISHED_STATUSES)
        )
    )
    if (unfinished or 0) >= limit:
        raise ApiError(
            429,
            "concurrency_limited",
            f"{unfinished} of your jobs are still pending or running; the limit is {limit}",
            limit=limit,
        )


async def publish_outbox_event(context: GatewayContext, outbox: OutboxEvent) -> bool:
    """Append the outbox event as the job's first event and mark it; True once confirmed."""
    if not await _append_first_event(context, outbox):
        return False
    async with context.sessions() as session, session.begin():
        await session.execute(
            update(OutboxEvent)
            .where(col(OutboxEvent.event_id) == outbox.event_id)
            .values(published_at=datetime.now(UTC), attempts=OutboxEvent.attempts + 1)
        )
    return True


async def _append_first_event(context: GatewayContext, outbox: OutboxEvent) -> bool:
    publisher = EventPublisher(context.nats, timeout=context.settings.publish_timeout_seconds)
    try:
        # A second append of the same event (the relay after the request) is a duplicate.
        await publisher.append(parse_event(outbox.payload), expected_sequence=0)
    except Exception as error:
        logger.warning(
            "event not confirmed on JOBS yet; the outbox relay will retry",
            extra={"event_id": str(outbox.event_id), "error": repr(error)},
        )
        return False
    return True


async def relay_outbox(context: GatewayContext, stop: asyncio.Event) -> None:
    """Publish events whose request did not confirm them (it died, NATS was down)."""
    settings = context.settings
    while not stop.is_set():
        try:
            await relay_pending(
                context, older_than=timedelta(seconds=settings.outbox_grace_seconds)
            )
        except Exception:
            logger.exception("outbox relay pass failed")
        try:
            await asyncio.wait_for(stop.wait(), settings.outbox_interval_seconds)
        except TimeoutError:
            continue


async def relay_pending(context: GatewayContext, *, older_than: timedelta) -> int:
    """One pass over unconfirmed events; returns how many were published."""
    cutoff = datetime.now(UTC) - older_than
    async with context.sessions() as session, session.begin():
        pending = (
            await session.scalars(
                select(OutboxEvent)
                .where(
                    col(OutboxEvent.published_at).is_(None), col(OutboxEvent.created_at) <= cutoff
                )
                .order_by(col(OutboxEvent.created_at))
                .limit(100)
                # Replicas share the outbox: each row goes to the first that locks it.
                .with_for_update(skip_locked=True)
            )
        ).all()
        published = 0
        for outbox in pending:
            outbox.attempts += 1
            if await _append_first_event(context, outbox):
                outbox.published_at = datetime.now(UTC)
                published += 1
    return published
