"""The dispatcher service: queues submitted jobs, admits them, starts and cancels workloads.

It follows JOBS through its durable consumer:
- `job.submitted`, `job.retried`: the attempt is queued (`job.queued`) and gets an
  admission row;
- `job.cancel-requested`: the workload, if any, is stopped, then `job.cancelled`;
- a job's end (`succeeded`, `failed`, `timed-out`, `cancelled`, `rejected`) or a lost
  workload frees its place.

Admission (woken by those events, and every few seconds) picks the queued jobs that
may start (`admission.choose_admissions`) and dispatches each: it claims the attempt
by appending `job.dispatched` first, then creates the workload under its deterministic
name. Replicas take turns at admission (it locks every row), and each dispatch is
leased to the replica that started it. A dispatcher that dies in between leaves the
row `dispatching`; once its lease runs out another one finishes the dispatch, and the
runner answers the existing workload instead of starting a second.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import weakref
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from uuid import UUID

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from ckrv.events.catalog import (
    JobCancelRequested,
    JobEvent,
    JobLost,
    JobRetried,
    JobSubmitted,
    parse_event,
)
from ckrv.events.consumer import ConsumerSpec, Delivery, EventConsumer
from ckrv.events.state import (
    ConfirmCancel,
    DispatchJob,
    FailJob,
    JobState,
    JobStatus,
    JobTransitionError,
    QueueJob,
    decide,
    evolve,
)
from ckrv.events.store import JobEventStore
from ckrv.events.subjects import JOBS_STREAM
from ckrv.schemas.api import SubscriptionTier
from ckrv.services.artifacts.uploads import upload_urls
from ckrv.services.common.credentials import OpenedCredential, open_credential
from ckrv.services.common.event_service import Concurrently, Connections, Work
from ckrv.services.common.settings import CommonSettings, Environment
from ckrv.services.common.storage import storage_client
from ckrv.services.common.tiers import TIERS
from ckrv.services.dispatcher.admission import (
    Admission,
    AdmissionState,
    Candidate,
    DispatchLease,
    choose_admissions,
)
from ckrv.services.dispatcher.settings import DispatcherSettings
from ckrv.services.runners.base import Runner, WorkloadRequest
from ckrv.services.runners.settings import RunnerSettings
from ckrv.services.worker.job_input import GitCredentialInfo, WorkerInput

logger = logging.getLogger(__name__)

CONSUMER = "dispatcher"
ACTOR = "service:dispatcher"
_FOLLOWED_EVENTS = (
    "submitted",
    "retried",
    "cancel-requested",
    "succeeded",
    "failed",
    "timed-out",
    "cancelled",
    "rejected",
    "lost",
)
# Events handled at once, each fetched by a pull of its own on the shared consumer, as
# replicas do: handling one waits mostly on NATS and PostgreSQL, and a burst of
# submissions would queue behind it one by one.
EVENT_HANDLERS = 16


_Decision = Callable[[JobState], Sequence[JobEvent]]


def dispatcher_spec() -> ConsumerSpec:
    return ConsumerSpec(
        durable=CONSUMER,
        stream=JOBS_STREAM,
        filter_subjects=tuple(f"jobs.*.{event}" for event in _FOLLOWED_EVENTS),
        retry_delays=(0.2, 1.0, 5.0, 30.0),
        max_deliver=10,
        fetch_timeout_seconds=0.5,
        # One message a fetch: nats-py holds the first message of a larger fetch until the
        # rest of the batch came or the fetch timed out, so a lone submission would wait up
        # to the fetch timeout. Handled one at a time anyway, the events lose nothing by it.
        batch_size=1,
        handlers=EVENT_HANDLERS,
        # What a dispatcher that died had fetched comes back to its successor after this;
        # a handler still at work keeps its message by telling the server it is.
        ack_wait_seconds=5.0,
    )


class CredentialUnavailable(Exception):
    """The job names a git credential that no longer exists or does not open."""


class Dispatcher:
    """The dispatcher's work, given its connections (the service wires them up)."""

    def __init__(
        self,
        *,
        common: CommonSettings,
        settings: DispatcherSettings,
        sessions: async_sessionmaker[AsyncSession],
        store: JobEventStore,
        runner: Runner,
    ) -> None:
        self._common = common
        self._settings = settings
        self._sessions = sessions
        self._store = store
        self._runner = runner
        self._storage = storage_client(common)
        self._keys = common.credential_key_ring()
        # Dispatch and cancel of one job never interleave. A lock per job, kept while in use:
        # locks shared by several jobs would queue a job's queueing behind another's dispatch.
        self._locks: weakref.WeakValueDictionary[UUID, asyncio.Lock] = weakref.WeakValueDictionary()
        self._admitting = asyncio.Lock()
        self.wake = asyncio.Event()

    def _lock(self, job_id: UUID) -> asyncio.Lock:
        lock = self._locks.get(job_id)
        if lock is None:
            lock = self._locks[job_id] = asyncio.Lock()
        return lock

    async def handle(self, delivery: Delivery[JobEvent]) -> None:
        event = delivery.payload
        match event:
            case JobSubmitted() | JobRetried():
                await self.enqueue(event.job_id)
            case JobCancelRequested():
                await self.cancel(event.job_id)
            case JobLost():
                # Only the lost attempt's place: its retry may hold the row already (another
                # replica handled `job.retried` first, or this loss is a late redelivery).
                await self._release(event.job_id, attempt=event.data.attempt)
            case _:
                await self._release(event.job_id)
        self.wake.set()

    # Queueing ---------------------------------------------------------------------------

    async def enqueue(self, job_id: UUID) -> None:
        """Queue the job's current attempt and give it an admission row."""
        async with self._lock(job_id):
            state = (await self._store.load(job_id)).state
            if state.cancel_requested and not state.is_terminal:
                await self._cancel_locked(job_id)
                return
            if state.status in {JobStatus.SUBMITTED, JobStatus.RETRYING}:
                assert state.user_id is not None
                position = await self._queue_length(UUID(state.user_id)) + 1
                reason = "admitted" if state.status is JobStatus.SUBMITTED else "retry"
                state = (
                    await self._execute(
                        job_id,
                        lambda current: (
                            decide(current, QueueJob(actor=ACTOR, reason=reason, position=position))
                            if current.status in {JobStatus.SUBMITTED, JobStatus.RETRYING}
                            else []
                        ),
                    )
                    or (await self._store.load(job_id)).state
                )
            if state.status is not JobStatus.QUEUED:
                return
            await self._admit_row(state)

    async def _queue_length(self, user_id: UUID) -> int:
        async with self._sessions() as session:
            count = await session.scalar(
                select(func.count()).where(
                    col(Admission.user_id) == user_id,
                    col(Admission.state) == AdmissionState.QUEUED,
                )
            )
        return int(count or 0)

    async def _admit_row(self, state: JobState) -> None:
        assert state.user_id is not None
        assert state.tier is not None
        row = {
            "job_id": state.job_id,
            "user_id": UUID(state.user_id),
            "attempt": state.attempt,
            "concurrency_limit": TIERS[SubscriptionTier(state.tier)].concurrent_jobs,
            "state": AdmissionState.QUEUED.value,
            "queued_at": datetime.now(UTC),
            "workload_name": None,
        }
        statement = insert(Admission).values(row)
        # A newer attempt replaces the row of the one it retries; a redelivery changes nothing.
        statement = statement.on_conflict_do_update(
            index_elements=[col(Admission.job_id)],
            set_={
                "attempt": statement.excluded.attempt,
                "state": statement.excluded.state,
                "queued_at": statement.excluded.queued_at,
                "workload_name": None,
            },
            where=col(Admission.attempt) < statement.excluded.attempt,
        )
        async with self._sessions() as session, session.begin():
            await session.execute(statement)

    async def _release(self, job_id: UUID, *, attempt: int | None = None) -> None:
        """Free the job's place; given an `attempt`, only if no later attempt holds it."""
        freed = delete(Admission).where(col(Admission.job_id) == job_id)
        if attempt is not None:
            freed = freed.where(col(Admission.attempt) <= attempt)
        async with self._sessions() as session, session.begin():
            if await session.scalar(freed.returning(col(Admission.job_id))) is not None:
                await session.execute(
                    delete(DispatchLease).where(col(DispatchLease.job_id) == job_id)
                )

    # Cancelling -------------------------------------------------------------------------

    async def cancel(self, job_id: UUID) -> None:
        async with self._lock(job_id):
            await self._cancel_locked(job_id)

    async def _cancel_locked(self, job_id: UUID) -> None:
        state = (await self._store.load(job_id)).state
        if not state.is_terminal and state.workload_name is not None:
            await self._runner.stop(state.workload_name, self._settings.stop_grace_seconds)
        await self._execute(
            job_id,
            lambda current: (
                []
                if current.is_terminal or not current.cancel_requested
                else decide(current, ConfirmCancel(actor=ACTOR))
            ),
        )
        await self._release(job_id)

    # Admission and dispatch -------------------------------------------------------------

    async def admit(self) -> int:
        """Dispatch the queued jobs that may start now, and abandoned dispatches; how many."""
        async with self._admitting:
            now = datetime.now(UTC)
            async with self._sessions() as session, session.begin():
                rows = list(await session.scalars(select(Admission).with_for_update()))
                chosen = set(choose_admissions(map(Candidate.of, rows), self._settings.capacity))
                dispatching = {
                    row.job_id for row in rows if row.state == AdmissionState.DISPATCHING
                }
                # A dispatch another replica is still at is left to it: taken over only
                # once that replica's lease ran out (it died, or never finished).
                leased = set(
                    await session.scalars(
                        select(col(DispatchLease.job_id)).where(
                            col(DispatchLease.job_id).in_(dispatching),
                            col(DispatchLease.expires_at) > now,
                        )
                    )
                )
                taken = chosen | (dispatching - leased)
                if chosen:
                    await session.execute(
                        update(Admission)
                        .where(col(Admission.job_id).in_(chosen))
                        .values(state=AdmissionState.DISPATCHING.value)
                    )
                if taken:
                    await self._lease(session, taken, now)
            attempts = {row.job_id: row.attempt for row in rows}
            await asyncio.gather(*(self._dispatch(job_id, attempts[job_id]) for job_id in taken))
            return len(taken)

    async def _lease(self, session: AsyncSession, job_ids: set[UUID], now: datetime) -> None:
        expires_at = now + timedelta(seconds=self._settings.dispatch_lease_seconds)
        statement = insert(DispatchLease).values(
            [{"job_id": job_id, "expires_at": expires_at} for job_id in sorted(job_ids)]
        )
        await session.execute(
            statement.on_conflict_do_update(
                index_elements=[col(DispatchLease.job_id)],
                set_={"expires_at": statement.excluded.expires_at},
            )
        )

    async def _dispatch(self, job_id: UUID, attempt: int) -> None:
        try:
            async with self._lock(job_id):
                await self._dispatch_locked(job_id, attempt)
        except Exception:
            # The row stays `dispatching`: the next admission pass, of any replica, tries again.
            logger.exception("dispatch failed", extra={"job_id": str(job_id)})
        async with self._sessions() as session, session.begin():
            await session.execute(delete(DispatchLease).where(col(DispatchLease.job_id) == job_id))

    async def _dispatch_locked(self, job_id: UUID, attempt: int) -> None:
        state = (await self._store.load(job_id)).state
        if state.is_terminal:
            await self._release(job_id)
            return
        if state.attempt != attempt:
            await self._release(job_id, attempt=attempt)
            return
        if state.cancel_requested:
            await self._cancel_locked(job_id)
            return
        if state.status is JobStatus.QUEUED:
            # The claim: once it is on JOBS, this attempt's workload is this dispatcher's to make.
            state = (
                await self._execute(
                    job_id,
                    lambda current: (
                        decide(current, DispatchJob(actor=ACTOR, runner=self._runner.backend))
                        if current.status is JobStatus.QUEUED and not current.cancel_requested
                        else []
                    ),
                )
                or (await self._store.load(job_id)).state
            )
        if state.status not in {JobStatus.DISPATCHED, JobStatus.RUNNING}:
            return
        try:
            request = await self._workload_request(state)
        except CredentialUnavailable as error:
            await self._fail(state, "credential_unavailable", str(error))
            return
        workload = await self._runner.create(request)
        if (await self._store.load(job_id)).state.cancel_requested:
            # Cancelled while the workload was being made: the replica that handled the cancel
            # may have found nothing to stop yet, so the workload is stopped here.
            await self._runner.stop(workload.name, self._settings.stop_grace_seconds)
            await self._cancel_locked(job_id)
            return
        async with self._sessions() as session, session.begin():
            await session.execute(
                update(Admission)
                .where(col(Admission.job_id) == job_id, col(Admission.attempt) == attempt)
                .values(state=AdmissionState.ACTIVE.value, workload_name=workload.name)
            )
        logger.info(
            "workload started" if workload.created else "workload was already there",
            extra={"job_id": str(job_id), "workload": workload.name},
        )

    async def _fail(self, state: JobState, error_code: str, message: str) -> None:
        attempt = state.attempt
        await self._execute(
            state.job_id,
            lambda current: (
                decide(
                    current,
                    FailJob(
                        actor=ACTOR, attempt=attempt, error_code=error_code, error_message=message
                    ),
                )
                if not current.is_terminal
                else []
            ),
        )
        await self._release(state.job_id)

    async def _workload_request(self, state: JobState) -> WorkloadRequest:
        assert state.user_id is not None
        assert state.spec_content is not None
        assert state.git_repo_url is not None
        assert state.git_base_branch is not None
        assert state.time_limit_seconds is not None
        credential = await self._credential(state)
        valid_for = timedelta(
            seconds=state.time_limit_seconds + self._settings.upload_url_margin_seconds
        )
        worker_input = WorkerInput(
            job_id=state.job_id,
            attempt=state.attempt,
            spec_content=state.spec_content,
            git_repo_url=state.git_repo_url,
            git_base_branch=state.git_base_branch,
            feature_branch=None,
            time_limit_seconds=state.time_limit_seconds,
            upload_urls=upload_urls(
                self._storage, self._common.s3_bucket, state.job_id, state.attempt, valid_for
            ),
            credential=None
            if credential is None
            else GitCredentialInfo(
                provider=credential.provider, credential_type=credential.credential_type
            ),
            # The gateway accepts local repositories only on a development stack.
            allow_local_repository=self._common.env is Environment.DEV,
        )
        files = worker_input.files(
            None if credential is None else credential.value.get_secret_value()
        )
        return WorkloadRequest(
            job_id=state.job_id,
            attempt=state.attempt,
            command=self._settings.worker_command,
            input_files=files,
            env=self._settings.workload_env,
            time_limit_seconds=state.time_limit_seconds,
            grace_seconds=self._settings.stop_grace_seconds,
            memory_limit_bytes=self._settings.workload_memory_limit_bytes,
            labels={"ckrv.dev/job-id": str(state.job_id), "ckrv.dev/attempt": str(state.attempt)},
        )

    async def _credential(self, state: JobState) -> OpenedCredential | None:
        name = state.git_credential_name
        if name is None:
            return None
        assert state.user_id is not None
        async with self._sessions() as session, session.begin():
            opened = await open_credential(session, self._keys, UUID(state.user_id), name)
        if opened is None:
            raise CredentialUnavailable(
                f"the git credential {name!r} was removed before the job started"
            )
        return opened

    async def _execute(self, job_id: UUID, decision: _Decision) -> JobState | None:
        """Append the decision's events; the job's state after them, without reading it again
        (None if another writer moved the job on meanwhile)."""
        decided: list[JobState] = []

        def deciding(current: JobState) -> Sequence[JobEvent]:
            events = decision(current)
            decided.append(functools.reduce(evolve, events, current))
            return events

        try:
            await self._store.execute(job_id, deciding)
        except JobTransitionError as error:
            # Another writer moved the job on (it ended, was cancelled): nothing left to do.
            logger.info("job moved on", extra={"job_id": str(job_id), "reason": str(error)})
            return None
        # The store decides again after losing a race: the last decision is the one appended.
        return decided[-1]

    async def admit_until(self, stop: asyncio.Event) -> None:
        """Admission passes when woken by an event, and every few seconds, until `stop`."""
        while not stop.is_set():
            self.wake.clear()
            try:
                await self.admit()
            except Exception:
                logger.exception("admission pass failed")
            waiting = [asyncio.create_task(self.wake.wait()), asyncio.create_task(stop.wait())]
            await asyncio.wait(
                waiting,
                timeout=self._settings.admission_interval_seconds,
                return_when=asyncio.FIRST_COMPLETED,
            )
            for task in waiting:
                task.cancel()


async def dispatcher_work(
    connections: Connections, settings: DispatcherSettings, runner_settings: RunnerSettings
) -> Work:
    """The dispatcher's work: its event handlers and its admission passes."""
    dispatcher = Dispatcher(
        common=connections.common,
        settings=settings,
        sessions=connections.sessions,
        store=connections.store,
        runner=await connections.runner(runner_settings),
    )
    consumer = EventConsumer(
        connections.nats.jetstream(), dispatcher_spec(), parse_event, dispatcher.handle
    )
    return Concurrently(consumer.run, dispatcher.admit_until)
