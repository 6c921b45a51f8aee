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
from typing import Any
from uuid import UUID, uuid4

import asyncpg
from asyncpg.exceptions import UniqueViolationError
from sqlalchemy import BindParameter, bindparam, delete, func, insert, or_, select
from sqlmodel import SQLModel, col

from ckrv.events.catalog import JobEvent, JobSubmittedData, parse_event
from ckrv.events.publisher import EventPublisher
from ckrv.events.state import SubmitJob, decide, evolve, initial_state
from ckrv.schemas.api import JobCreate, JobPublic, SubscriptionTier
from ckrv.schemas.git import GitInputError, validate_branch_name, validate_repository_url
from ckrv.schemas.spec import SpecError, parse_spec
from ckrv.services.common.credentials import GitCredential
from ckrv.services.common.driver_sql import DriverStatement, driver_transaction
from ckrv.services.common.tiers import TIERS, billing_cycle
from ckrv.services.gateway.context import GatewayContext
from ckrv.services.gateway.errors import ApiError, validation_error
from ckrv.services.gateway.outbox import mark_published
from ckrv.services.gateway.presenter import TYPICAL_DURATION, present, present_all
from ckrv.services.gateway.projection import record_values
from ckrv.services.gateway.quota import CHARGED_JOBS
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


# The statements of an acceptance, compiled once and run on asyncpg: preparing and running
# them through SQLAlchemy cost more than everything else a submission does.
_LOCK_OWNER = DriverStatement(
    select(col(User.subscription_tier))
    .where(col(User.id) == bindparam("user_id"))
    .with_for_update()
)
# Jobs charged this cycle, jobs not finished, and the typical run time on the repository.
_ACCOUNT = DriverStatement(
    select(
        CHARGED_JOBS.scalar_subquery(),
        select(func.count())
        .where(
            col(JobRecord.user_id) == bindparam("user_id"),
            or_(*(col(JobRecord.status) == status for status in UNFINISHED_STATUSES)),
        )
        .scalar_subquery(),
        TYPICAL_DURATION.scalar_subquery(),
    )
)
_CREDENTIAL = DriverStatement(
    select(col(GitCredential.id)).where(
        col(GitCredential.user_id) == bindparam("user_id"),
        col(GitCredential.name) == bindparam("name"),
    )
)
_KEY = DriverStatement(
    select(
        col(IdempotencyKey.created_at),
        col(IdempotencyKey.request_hash),
        col(IdempotencyKey.job_id),
    )
    .where(
        col(IdempotencyKey.user_id) == bindparam("user_id"),
        col(IdempotencyKey.key) == bindparam("key"),
    )
    .with_for_update()
)
_DELETE_KEY = DriverStatement(
    delete(IdempotencyKey).where(
        col(IdempotencyKey.user_id) == bindparam("user_id"),
        col(IdempotencyKey.key) == bindparam("key"),
    )
)


def _row_of(table: type[SQLModel], prefix: str) -> dict[str, BindParameter[Any]]:
    """A parameter for each column of `table`, named `<prefix><column>`."""
    columns = SQLModel.metadata.tables[str(table.__tablename__)].columns
    return {column.name: bindparam(prefix + column.name, type_=column.type) for column in columns}


def _insert_accepted(*, with_key: bool) -> DriverStatement:
    """The accepted job's rows in one statement: the jobs row, the outbox event and the
    quota charge (and the idempotency key) as data-modifying CTEs of one INSERT."""
    parts = [
        insert(JobRecord).values(_row_of(JobRecord, "job_")).cte("accepted_job"),
        insert(OutboxEvent).values(_row_of(OutboxEvent, "outbox_")).cte("accepted_event"),
    ]
    if with_key:
        key = insert(IdempotencyKey).values(_row_of(IdempotencyKey, "key_"))
        parts.append(key.cte("accepted_key"))
    return DriverStatement(
        insert(QuotaCharge).values(_row_of(QuotaCharge, "charge_")).add_cte(*parts)
    )


_INSERT_ACCEPTED = _insert_accepted(with_key=False)
_INSERT_ACCEPTED_WITH_KEY = _insert_accepted(with_key=True)


@dataclass(frozen=True)
class Submission:
    job: JobPublic
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
    context: GatewayContext,
    user_id: UUID,
    body: JobCreate,
    idempotency_key: str | None,
) -> Submission:
    """Accept the job and publish its event."""
    spec_id = validated_submission(body, allow_local=context.settings.allow_local_repositories)
    if idempotency_key is not None and not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY_LENGTH:
        raise validation_error("Idempotency-Key", "must be 1 to 255 characters")
    request = _Request(
        user_id=user_id,
        body=body,
        spec_id=spec_id,
        idempotency_key=idempotency_key,
        fingerprint=request_fingerprint(body) if idempotency_key is not None else None,
    )
    return await _submit(context, request)


@dataclass(frozen=True)
class _Request:
    user_id: UUID
    body: JobCreate
    spec_id: str
    idempotency_key: str | None
    fingerprint: str | None


async def _submit(context: GatewayContext, request: _Request) -> Submission:
    try:
        outcome = await _accept(context, request)
    except UniqueViolationError:
        # A concurrent request with the same key won the insert: answer as its replay.
        if request.idempotency_key is None:
            raise
        outcome = await _accept(context, request)
    if isinstance(outcome, UUID):
        return await _replayed(context, request.user_id, outcome)
    submission, event = outcome
    if await _append_first_event(context, event):
        if context.published is not None:
            context.published.add(event.id)
        else:
            await mark_published(context.sessions, [event.id])
    return submission


async def _accept(context: GatewayContext, request: _Request) -> tuple[Submission, JobEvent] | UUID:
    """The accepted job and its event, or the id of the job an earlier request made."""
    now = datetime.now(UTC)
    user_id, body = request.user_id, request.body
    repository = body.git_repo_url.strip()
    async with driver_transaction(context.engine) as connection:
        # One submission of a user at a time: the quota check and charge cannot interleave.
        tier_name = await _LOCK_OWNER.fetchval(connection, {"user_id": user_id})
        if tier_name is None:
            raise ApiError(401, "unauthorized", "the user no longer exists")
        if request.idempotency_key is not None:
            assert request.fingerprint is not None
            replayed = await _earlier_job(
                connection, user_id, request.idempotency_key, request.fingerprint, now
            )
            if replayed is not None:
                return replayed
        if body.git_credential_name is not None and (
            await _CREDENTIAL.fetchval(
                connection, {"user_id": user_id, "name": body.git_credential_name}
            )
            is None
        ):
            raise validation_error(
                "git_credential_name",
                f"no stored credential named {body.git_credential_name!r}; "
                "add it with `ckrv cloud credentials add`",
            )
        tier = SubscriptionTier(tier_name)
        limits = TIERS[tier]
        cycle = billing_cycle(now)
        # Quota, unfinished jobs and the completion estimate, in one round trip.
        account = await _ACCOUNT.fetchrow(
            connection, {"user_id": user_id, "cycle_start": cycle.start, "repository": repository}
        )
        assert account is not None
        charged, unfinished, typical = account
        overage = charged >= limits.included_jobs
        if overage and limits.overage_cents_per_job is None:
            raise ApiError(
                402,
                "quota_exceeded",
                f"the {tier} tier includes {limits.included_jobs} jobs a month, all used",
                quota_resets_at=cycle.end.isoformat(),
                upgrade_url=context.settings.upgrade_url,
            )
        if unfinished >= limits.unfinished_jobs:
            raise ApiError(
                429,
                "concurrency_limited",
                f"{unfinished} of your jobs are still pending or running; "
                f"the limit is {limits.unfinished_jobs}",
                limit=limits.unfinished_jobs,
            )

        job_id = uuid4()
        (event,) = decide(
            initial_state(job_id),
            SubmitJob(
                actor=f"user:{user_id}",
                occurred_at=now,
                submission=JobSubmittedData(
                    user_id=str(user_id),
                    tier=tier,
                    spec_id=request.spec_id,
                    spec_content=body.spec_content,
                    git_repo_url=repository,
                    git_base_branch=body.git_base_branch,
                    git_credential_name=body.git_credential_name,
                    time_limit_seconds=limits.time_limit_seconds,
                    max_attempts=limits.max_attempts,
                ),
            ),
        )
        values = record_values(evolve(initial_state(job_id), event), last_sequence=0)
        rows = {
            **{f"job_{name}": value for name, value in values.items()},
            "outbox_event_id": event.id,
            "outbox_job_id": job_id,
            "outbox_payload": event.model_dump_json(),
            "outbox_created_at": now,
            "outbox_published_at": None,
            "outbox_attempts": 0,
            "charge_job_id": job_id,
            "charge_user_id": user_id,
            "charge_cycle_start": cycle.start,
            "charge_overage": overage,
            "charge_amount_cents": (limits.overage_cents_per_job or 0) if overage else 0,
            "charge_charged_at": now,
            "charge_refunded_at": None,
        }
        if request.idempotency_key is None:
            await _INSERT_ACCEPTED.execute(connection, rows)
        else:
            rows |= {
                "key_user_id": user_id,
                "key_key": request.idempotency_key,
                "key_request_hash": request.fingerprint,
                "key_job_id": job_id,
                "key_created_at": now,
            }
            await _INSERT_ACCEPTED_WITH_KEY.execute(connection, rows)
    durations = {repository: typical} if typical is not None else {}
    return Submission(present(JobRecord(**values), durations, now), created=True), event


async def _earlier_job(
    connection: asyncpg.Connection, user_id: UUID, key: str, fingerprint: str, now: datetime
) -> UUID | None:
    """The job an earlier request with this key made, if the key is current and matches."""
    identity = {"user_id": user_id, "key": key}
    stored = await _KEY.fetchrow(connection, identity)
    if stored is None:
        return None
    created_at, request_hash, job_id = stored
    if created_at < now - IDEMPOTENCY_WINDOW:
        await _DELETE_KEY.execute(connection, identity)
        return None
    if request_hash != fingerprint:
        raise ApiError(
            409,
            "idempotency_conflict",
            "this Idempotency-Key was used for a different request in the last 24 hours",
            job_id=str(job_id),
        )
    earlier: UUID = job_id
    return earlier


async def _replayed(context: GatewayContext, user_id: UUID, job_id: UUID) -> Submission:
    async with context.sessions() as session:
        record = await session.get(JobRecord, job_id)
        assert record is not None, "an idempotency key outlived its job"
        (job,) = await present_all(session, user_id, [record])
    return Submission(job, created=False)


async def publish_outbox_event(context: GatewayContext, outbox: OutboxEvent) -> bool:
    """Append the outbox event as the job's first event and mark it; True once confirmed."""
    if not await _append_first_event(context, parse_event(outbox.payload)):
        return False
    await mark_published(context.sessions, [outbox.event_id])
    return True


async def _append_first_event(context: GatewayContext, event: JobEvent) -> bool:
    publisher = EventPublisher(context.nats, timeout=context.settings.publish_timeout_seconds)
    try:
        # A second append of the same event (the relay after the request) is a duplicate.
        await publisher.append(event, expected_sequence=0)
    except Exception as error:
        logger.warning(
            "event not confirmed on JOBS yet; the outbox relay will retry",
            extra={"event_id": str(event.id), "error": repr(error)},
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
            if await _append_first_event(context, parse_event(outbox.payload)):
                outbox.published_at = datetime.now(UTC)
                published += 1
    return published
