"""The janitor: deletes finished jobs' results when their retention ends, and records it.

It follows the ends of jobs on JOBS through its durable consumer: a job that ran a
workload gets a row (`retention.ResultRetention`) saying when its results expire,
its end plus its tier's retention. Every `expiry_interval_seconds` it takes the
rows that are due and, for each job, lists the objects under `jobs/<job_id>/`,
appends `job.expired` with their keys, deletes them, then the row. The event goes
first, as a claim: from then on the API answers 410 rather than a link to an object
about to vanish, and a janitor that dies before the deletion finds the row again
and deletes what is left. Replicas share the consumer and skip each other's rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from uuid import UUID

from minio import Minio
from minio.deleteobjects import DeleteObject
from prometheus_client import Counter
from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from ckrv.events.catalog import JobEvent
from ckrv.events.consumer import ConsumerSpec, Delivery
from ckrv.events.state import ExpireResults, decide
from ckrv.events.store import JobEventStore
from ckrv.events.subjects import JOBS_STREAM
from ckrv.services.artifacts.retention import (
    ResultRetention,
    job_results_prefix,
    retention_period,
)
from ckrv.services.artifacts.settings import ArtifactsSettings

logger = logging.getLogger(__name__)

CONSUMER = "artifacts"
ACTOR = "service:artifacts"
# A job's end; `rejected` is not among them: a rejected job never stored anything.
_FOLLOWED_EVENTS = ("succeeded", "failed", "timed-out", "cancelled")

EXPIRED_JOBS = Counter("ckrv_artifacts_expired_jobs_total", "Jobs whose results were deleted.")
EXPIRED_OBJECTS = Counter(
    "ckrv_artifacts_expired_objects_total", "Result and log objects deleted at their expiry."
)


def janitor_spec() -> ConsumerSpec:
    return ConsumerSpec(
        durable=CONSUMER,
        stream=JOBS_STREAM,
        filter_subjects=tuple(f"jobs.*.{event}" for event in _FOLLOWED_EVENTS),
        retry_delays=(0.2, 1.0, 5.0, 30.0),
        max_deliver=10,
    )


class DeletionFailed(Exception):
    """Storage refused to delete some of an expired job's objects."""


class Janitor:
    """The janitor's work, given its connections (the service wires them up)."""

    def __init__(
        self,
        *,
        settings: ArtifactsSettings,
        sessions: async_sessionmaker[AsyncSession],
        store: JobEventStore,
        storage: Minio,
        bucket: str,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._store = store
        self._storage = storage
        self._bucket = bucket

    async def handle(self, delivery: Delivery[JobEvent]) -> None:
        """Note when the results of the job that just ended expire."""
        state = (await self._store.load(delivery.payload.job_id)).state
        # No workload, no results; and a replayed end of an expired job has nothing left.
        if not state.is_terminal or state.workload_name is None or state.expired_at is not None:
            return
        assert state.completed_at is not None
        assert state.tier is not None
        expires_at = state.completed_at + retention_period(
            state.tier, self._settings.retention_seconds_override
        )
        async with self._sessions() as session, session.begin():
            await session.execute(
                insert(ResultRetention)
                .values(job_id=state.job_id, expires_at=expires_at)
                .on_conflict_do_nothing()
            )

    async def expire_due(self, now: datetime | None = None) -> int:
        """Delete the results of jobs whose retention ended by `now`; how many jobs."""
        now = now or datetime.now(UTC)
        expired: list[UUID] = []
        async with self._sessions() as session, session.begin():
            due = await session.scalars(
                select(col(ResultRetention.job_id))
                .where(col(ResultRetention.expires_at) <= now)
                .order_by(col(ResultRetention.expires_at))
                .limit(self._settings.expiry_batch_size)
                .with_for_update(skip_locked=True)
            )
            for job_id in due.all():
                try:
                    await self._expire(job_id, now)
                except Exception:
                    # The row stays: the next pass tries again.
                    logger.exception("could not expire results", extra={"job_id": str(job_id)})
                else:
                    expired.append(job_id)
            if expired:
                await session.execute(
                    delete(ResultRetention).where(col(ResultRetention.job_id).in_(expired))
                )
        return len(expired)

    async def _expire(self, job_id: UUID, now: datetime) -> None:
        keys = await asyncio.to_thread(self._stored_keys, job_id)
        expire = ExpireResults(actor=ACTOR, expired_at=now, keys=keys)
        # An earlier pass that appended the event but died before deleting finds `[]` here.
        await self._store.execute(job_id, lambda state: decide(state, expire))
        if keys:
            await asyncio.to_thread(self._delete, keys)
        EXPIRED_JOBS.inc()
        EXPIRED_OBJECTS.inc(len(keys))
        logger.info("results expired", extra={"job_id": str(job_id), "objects": len(keys)})

    def _stored_keys(self, job_id: UUID) -> tuple[str, ...]:
        listing = self._storage.list_objects(
            self._bucket, prefix=job_results_prefix(job_id), recursive=True
        )
        return tuple(sorted(item.object_name for item in listing if item.object_name))

    def _delete(self, keys: tuple[str, ...]) -> None:
        errors = list(self._storage.remove_objects(self._bucket, map(DeleteObject, keys)))
        if errors:
            first = errors[0]
            raise DeletionFailed(
                f"{len(errors)} of {len(keys)} objects not deleted; {first.name}: {first.message}"
            )

    async def expire_until(self, stop: asyncio.Event) -> None:
        """An expiry pass every `expiry_interval_seconds`, until `stop`."""
        while not stop.is_set():
            try:
                await self.expire_due()
            except Exception:
                logger.exception("expiry pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._settings.expiry_interval_seconds)
