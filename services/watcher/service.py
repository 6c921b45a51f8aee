"""The watcher service: workload observations in, job events out, and the periodic reconcile.

It follows the runner's `watch` (every workload's status, then each change) and
records each on the job (`observations.observed`); a workload that succeeded has its
uploads verified first (`artifacts.verification`). Every few seconds it also
reconciles the jobs the dispatcher holds places for against the workloads that
exist: a workload gone missing is a lost attempt, one stuck pending too long is
lost as well, one running past its time limit is stopped and timed out, and one
that finished without its end recorded (storage was unreachable) is observed again.
Finished workloads are garbage-collected after a while. Alongside, it follows the
ends of jobs on JOBS and releases their workloads' secret inputs at once
(`input_release`).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from uuid import UUID

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from ckrv.events.catalog import parse_event
from ckrv.events.consumer import EventConsumer
from ckrv.events.envelope import observation_event_id
from ckrv.events.state import JobCommand, JobTransitionError, TimeOutJob
from ckrv.events.store import JobEventStore
from ckrv.services.artifacts.verification import check_result
from ckrv.services.common.event_service import Concurrently, Connections, Work
from ckrv.services.common.settings import CommonSettings
from ckrv.services.common.storage import storage_client
from ckrv.services.dispatcher.admission import Admission, AdmissionState
from ckrv.services.runners.base import Runner, WorkloadNotFound, WorkloadState, WorkloadStatus
from ckrv.services.runners.settings import RunnerSettings
from ckrv.services.watcher.input_release import InputRelease, input_release_spec
from ckrv.services.watcher.observations import (
    ACTOR,
    WorkerFinish,
    decide_all,
    lost,
    observed,
)
from ckrv.services.watcher.settings import WatcherSettings

logger = logging.getLogger(__name__)

# The end of a workload's output searched for the worker's last line.
OUTPUT_TAIL_BYTES = 64 * 1024
# Observations recorded at once. Each waits mostly on NATS and storage: one after the
# other, the statuses of a thousand workloads starting or ending together queue for long.
OBSERVATIONS_AT_ONCE = 32
_FINISHED = frozenset({WorkloadState.SUCCEEDED, WorkloadState.FAILED})


class Watcher:
    """The watcher's work, given its connections (the service wires them up)."""

    def __init__(
        self,
        *,
        common: CommonSettings,
        settings: WatcherSettings,
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

    async def follow(self, stop: asyncio.Event) -> None:
        """Record every status the runner reports, until `stop`: several workloads' at once,
        each workload's in the order reported."""
        room = asyncio.Semaphore(OBSERVATIONS_AT_ONCE)
        recording: set[asyncio.Task[None]] = set()
        # Each workload's last observation, which its next one waits for.
        latest: dict[str, asyncio.Task[None]] = {}

        async def record(status: WorkloadStatus, after: asyncio.Task[None] | None) -> None:
            try:
                if after is not None:
                    await asyncio.wait({after})
                await self.observe(status)
            except Exception:
                logger.exception("could not record an observation", extra={"workload": status.name})
            finally:
                room.release()
                if latest.get(status.name) is asyncio.current_task():
                    del latest[status.name]

        try:
            async for status in self._runner.watch():
                if stop.is_set():
                    return
                await room.acquire()
                task = asyncio.create_task(record(status, latest.get(status.name)))
                latest[status.name] = task
                recording.add(task)
                task.add_done_callback(recording.discard)
        finally:
            for task in recording:
                task.cancel()
            await asyncio.gather(*recording, return_exceptions=True)

    async def observe(self, status: WorkloadStatus) -> None:
        state = (await self._store.load(status.job_id)).state
        if state.is_terminal or state.workload_name != status.name:
            return
        result = finish = None
        if status.state is WorkloadState.SUCCEEDED:
            result = await check_result(
                self._storage, self._common.s3_bucket, status.job_id, status.attempt
            )
        elif status.state is WorkloadState.FAILED:
            finish = await self._finish(status)
        await self._record(status.job_id, observed(status, state, result=result, finish=finish))

    async def _record(self, job_id: UUID, commands: list[JobCommand]) -> None:
        if not commands:
            return
        try:
            await self._store.execute(job_id, lambda state: decide_all(state, commands))
        except JobTransitionError as error:
            # The job moved on first (cancelled, or ended another way): that end stands.
            logger.info(
                "observation not recorded", extra={"job_id": str(job_id), "why": str(error)}
            )

    async def _finish(self, status: WorkloadStatus) -> WorkerFinish | None:
        tail = b""
        try:
            async for chunk in self._runner.read_output(status.name):
                tail = (tail + chunk.data)[-OUTPUT_TAIL_BYTES:]
        except WorkloadNotFound:
            return None
        return WorkerFinish.from_output_tail(tail)

    async def reconcile(self) -> None:
        """Check the jobs holding places against their workloads; collect old workloads."""
        now = datetime.now(UTC)
        async with self._sessions() as session:
            active = list(
                await session.scalars(
                    select(Admission).where(
                        col(Admission.state) == AdmissionState.ACTIVE,
                        col(Admission.workload_name).is_not(None),
                    )
                )
            )
        for admission in active:
            assert admission.workload_name is not None
            status = await self._runner.get(admission.workload_name)
            if status is None:
                await self._lost(admission, "the workload disappeared", now)
            elif status.state in _FINISHED:
                await self.observe(status)
            else:
                await self._check_timeouts(status, now)
        collected = await self._runner.collect_garbage(
            finished_before=now - timedelta(seconds=self._settings.collect_after_seconds)
        )
        if collected:
            logger.info("finished workloads collected", extra={"count": len(collected)})

    async def _lost(self, admission: Admission, reason: str, now: datetime) -> None:
        assert admission.workload_name is not None
        state = (await self._store.load(admission.job_id)).state
        if state.is_terminal or state.workload_name != admission.workload_name:
            return
        placeholder = WorkloadStatus(
            name=admission.workload_name,
            job_id=admission.job_id,
            attempt=admission.attempt,
            state=WorkloadState.GONE,
            created_at=now,
        )
        await self._record(admission.job_id, lost(placeholder, reason, now))

    async def _check_timeouts(self, status: WorkloadStatus, now: datetime) -> None:
        if status.state is WorkloadState.PENDING:
            waited = (now - status.created_at).total_seconds()
            if waited > self._settings.pending_timeout_seconds:
                await self._runner.stop(status.name, self._settings.stop_grace_seconds)
                await self._record(
                    status.job_id,
                    lost(status, f"the workload did not start within {waited:.0f} seconds", now),
                )
        elif status.state is WorkloadState.RUNNING and status.started_at is not None:
            state = (await self._store.load(status.job_id)).state
            limit = state.time_limit_seconds
            if limit is None:
                return
            overdue = now - status.started_at > timedelta(
                seconds=limit + self._settings.run_timeout_margin_seconds
            )
            if overdue:
                # The runner should have ended it at the limit; make sure it does not run on.
                await self._runner.stop(status.name, self._settings.stop_grace_seconds)
                timed_out = TimeOutJob(
                    actor=ACTOR,
                    attempt=status.attempt,
                    event_id=observation_event_id(status.name, "timed-out"),
                )
                await self._record(status.job_id, [timed_out])

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the runner and reconcile until `stop`."""
        # Following waits on the runner's next report, which `stop` does not interrupt.
        following = asyncio.create_task(self.follow(stop))
        try:
            await self.reconcile_until(stop)
        finally:
            following.cancel()
            await asyncio.gather(following, return_exceptions=True)

    async def reconcile_until(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.reconcile()
            except Exception:
                logger.exception("reconcile pass failed")
            try:
                await asyncio.wait_for(stop.wait(), self._settings.reconcile_interval_seconds)
            except TimeoutError:
                continue


async def watcher_work(
    connections: Connections, settings: WatcherSettings, runner_settings: RunnerSettings
) -> Work:
    """The watcher's work: following workloads and reconciling, and releasing ended jobs' inputs."""
    runner = await connections.runner(runner_settings)
    watcher = Watcher(
        common=connections.common,
        settings=settings,
        sessions=connections.sessions,
        store=connections.store,
        runner=runner,
    )
    release = InputRelease(store=connections.store, runner=runner)
    consumer = EventConsumer(
        connections.nats.jetstream(), input_release_spec(), parse_event, release.handle
    )
    return Concurrently(consumer.run, watcher.run)
