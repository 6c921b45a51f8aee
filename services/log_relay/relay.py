"""The relay: follows every workload's output, publishing its lines as entries on `logs.<job_id>`.

Each workload the runner reports (those there at start, then each new one) gets a
follower task that reads its output from the saved position, publishes each line's
entries (numbered on from the job's previous attempts), turns the worker's phase
markers into `job.phase-changed` events, and saves the position once JetStream has
acknowledged the entries. When the workload has ended and its output is all
published, the attempt's log is archived and recorded with `job.artifact-stored`.

One job's workloads are followed one at a time, in the order they appear, so that
`seq` runs on from one attempt to the next and a republished entry after a crash
meets its earlier self under the same `Nats-Msg-Id`. Only one relay may run over
one runner: replicas would publish every line twice under different numbers.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter as Tally
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

from nats.aio.client import Client
from prometheus_client import Counter, Gauge, Histogram
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ckrv.events.envelope import observation_event_id
from ckrv.events.state import ChangePhase, JobCommand, JobTransitionError, RecordArtifact, decide
from ckrv.events.store import JobEventStore
from ckrv.events.subjects import LOGS_STREAM, job_log_subject
from ckrv.services.common.credentials import open_credential
from ckrv.services.common.sealing import UnsealError
from ckrv.services.common.settings import CommonSettings
from ckrv.services.common.storage import storage_client
from ckrv.services.log_relay import positions
from ckrv.services.log_relay.archive import (
    LOG_ARCHIVE_NAME,
    archive_attempt_log,
    last_published_seq,
)
from ckrv.services.log_relay.output_lines import LineCutter, OutputLine, log_entries, read_line
from ckrv.services.log_relay.positions import ResumePoint
from ckrv.services.log_relay.redaction import Redactor
from ckrv.services.log_relay.settings import LogRelaySettings
from ckrv.services.runners.base import Runner, WorkloadNotFound, WorkloadState

logger = logging.getLogger(__name__)

ACTOR = "service:log-relay"

ENTRIES = Counter("ckrv_log_relay_entries_total", "Log entries published on LOGS.")
OUTPUT_BYTES = Counter(
    "ckrv_log_relay_output_bytes_total", "Bytes of workload output published as entries."
)
LAG_SECONDS = Histogram(
    "ckrv_log_relay_lag_seconds",
    "From a line's timestamp (when the worker wrote it, or when a plain line was read) to "
    "JetStream's acknowledgement of its entries.",
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
FOLLOWED = Gauge("ckrv_log_relay_workloads_followed", "Workloads whose output is being followed.")
ARCHIVES = Counter("ckrv_log_relay_archives_total", "Attempt logs written to object storage.")
FAILURES = Counter(
    "ckrv_log_relay_failures_total", "Times following a workload failed and was started again."
)


@dataclass(frozen=True)
class Workload:
    """A workload whose output the relay follows: one attempt of a job."""

    name: str
    job_id: UUID
    attempt: int


class LogRelay:
    """The relay's work, given its connections (the service wires them up)."""

    def __init__(
        self,
        *,
        common: CommonSettings,
        settings: LogRelaySettings,
        nc: Client,
        sessions: async_sessionmaker[AsyncSession],
        runner: Runner,
    ) -> None:
        self._common = common
        self._settings = settings
        self._js = nc.jetstream()
        self._store = JobEventStore(nc)
        self._sessions = sessions
        self._runner = runner
        self._storage = storage_client(common)
        self._keys = common.credential_key_ring()
        self._followers: dict[str, asyncio.Task[None]] = {}
        # Workloads whose log is archived: nothing more to do until the runner drops them.
        self._done: set[str] = set()
        self._job_locks: dict[UUID, asyncio.Lock] = {}
        self._job_followers: Tally[UUID] = Tally()

    async def run(self, stop: asyncio.Event) -> None:
        """Follow every workload until `stop`; then stop following (positions are saved)."""
        for workload in await self._workloads_at_start():
            self._start_following(workload)
        watching = asyncio.create_task(self._watch())
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({watching, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if watching.done():
                watching.result()  # the runner failed: let the service end and be restarted
        finally:
            tasks = [watching, stopping, *self._followers.values()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _workloads_at_start(self) -> list[Workload]:
        """The runner's workloads, and those it dropped before their log was archived.

        Earlier attempts first, so that each job's followers queue for its lock in order.
        """
        present = {
            status.name: Workload(status.name, status.job_id, status.attempt)
            for status in await self._runner.list()
        }
        async with self._sessions() as session, session.begin():
            dropped = [
                row
                for row in await positions.list_positions(session)
                if row.workload_name not in present
            ]
            await positions.forget_positions(
                session, [row.workload_name for row in dropped if row.archived_at is not None]
            )
        unarchived = [
            Workload(row.workload_name, row.job_id, row.attempt)
            for row in dropped
            if row.archived_at is None
        ]
        return sorted([*present.values(), *unarchived], key=lambda workload: workload.attempt)

    async def _watch(self) -> None:
        async for status in self._runner.watch():
            if status.state is not WorkloadState.GONE:
                self._start_following(Workload(status.name, status.job_id, status.attempt))
            elif status.name in self._done:
                self._done.discard(status.name)
                await self._forget(status.name)
            # A workload gone while followed: its follower reads what is left, and archives it.

    async def _forget(self, name: str) -> None:
        try:
            async with self._sessions() as session, session.begin():
                await positions.forget_positions(session, [name])
        except Exception:
            # Harmless: the next start of the relay drops the row.
            logger.exception("could not drop a workload's position", extra={"workload": name})

    def _start_following(self, workload: Workload) -> None:
        """Follow the workload, unless it is followed already or done with."""
        name, job_id = workload.name, workload.job_id
        if name in self._followers or name in self._done:
            return
        lock = self._job_locks.setdefault(job_id, asyncio.Lock())
        self._followers[name] = follower = asyncio.create_task(
            self._follow(workload, lock), name=f"follow {name}"
        )
        self._job_followers[job_id] += 1

        def forget(_: asyncio.Task[None]) -> None:
            del self._followers[name]
            self._job_followers[job_id] -= 1
            if not self._job_followers[job_id]:
                del self._job_followers[job_id]
                del self._job_locks[job_id]

        follower.add_done_callback(forget)

    async def _follow(self, workload: Workload, lock: asyncio.Lock) -> None:
        FOLLOWED.inc()
        try:
            async with lock:
                while True:
                    try:
                        await self._relay(workload)
                        self._done.add(workload.name)
                        return
                    except Exception:
                        FAILURES.inc()
                        logger.exception(
                            "following a workload failed; starting again from its saved position",
                            extra={"workload": workload.name},
                        )
                    await asyncio.sleep(self._settings.retry_delay_seconds)
        finally:
            FOLLOWED.dec()

    async def _relay(self, workload: Workload) -> None:
        """Publish the workload's output from where it was left, to its end; then archive it."""
        point = await self._resume_point(workload)
        if point.archived:
            return
        try:
            await self._publish_output(workload, point)
        except WorkloadNotFound:
            # Deleted before its output was read to the end: the archive keeps what was.
            logger.warning(
                "workload gone before its output was read", extra={"workload": workload.name}
            )
        await self._archive(workload)

    async def _resume_point(self, workload: Workload) -> ResumePoint:
        async with self._sessions() as session, session.begin():
            found = await positions.find_position(session, workload.name)
        if found is not None:
            return found
        # A new attempt numbers its entries on from the job's earlier ones.
        first_seq = await last_published_seq(self._js, workload.job_id) + 1
        async with self._sessions() as session, session.begin():
            return await positions.start_position(
                session, workload.name, workload.job_id, workload.attempt, first_seq
            )

    async def _publish_output(self, workload: Workload, point: ResumePoint) -> None:
        cutter = LineCutter(point.offset, self._settings.max_line_bytes)
        redactor = Redactor(
            await self._job_secrets(workload.job_id), inside_private_key=point.inside_private_key
        )
        next_seq = point.next_seq
        async for chunk in self._runner.read_output(workload.name, point.offset, follow=True):
            next_seq = await self._publish(workload, cutter.feed(chunk), cutter, redactor, next_seq)
        # What follows the last line break is a line too, now that nothing more will come.
        await self._publish(workload, cutter.finish(), cutter, redactor, next_seq)

    async def _publish(
        self,
        workload: Workload,
        lines: list[OutputLine],
        cutter: LineCutter,
        redactor: Redactor,
        next_seq: int,
    ) -> int:
        """Publish the lines' entries, record their phase markers, save the position; next `seq`."""
        if not lines:
            return next_seq
        subject = job_log_subject(workload.job_id)
        for line in lines:
            read = read_line(line.data, datetime.now(UTC))
            entries = log_entries(
                read, attempt=workload.attempt, first_seq=next_seq, redact=redactor.redact
            )
            for entry in entries:
                await self._js.publish(
                    subject,
                    entry.model_dump_json().encode(),
                    timeout=self._settings.publish_timeout_seconds,
                    stream=LOGS_STREAM,
                    headers={"Nats-Msg-Id": f"{workload.job_id}:{entry.seq}"},
                )
            ENTRIES.inc(len(entries))
            OUTPUT_BYTES.inc(len(line.data))
            LAG_SECONDS.observe(max(0.0, (datetime.now(UTC) - read.timestamp).total_seconds()))
            next_seq += len(entries)
            if read.entered_phase is not None:
                await self._record_phase(workload, read.entered_phase)
        async with self._sessions() as session, session.begin():
            await positions.save_progress(
                session,
                workload.name,
                offset=cutter.offset,
                next_seq=next_seq,
                inside_private_key=redactor.inside_private_key,
            )
        return next_seq

    async def _job_secrets(self, job_id: UUID) -> list[str]:
        """The value of the job's git credential, if it names one that still opens."""
        state = (await self._store.load(job_id)).state
        if state.git_credential_name is None or state.user_id is None:
            return []
        # Not committed: opening it here is no use of the credential (`last_used_at`).
        async with self._sessions() as session:
            try:
                opened = await open_credential(
                    session, self._keys, UUID(state.user_id), state.git_credential_name
                )
            except UnsealError:
                logger.exception(
                    "the job's credential does not open", extra={"job_id": str(job_id)}
                )
                return []
        return [] if opened is None else [opened.value.get_secret_value()]

    async def _record_phase(self, workload: Workload, phase: str) -> None:
        try:
            command = ChangePhase.model_validate(
                {
                    "actor": ACTOR,
                    "attempt": workload.attempt,
                    "phase": phase,
                    "event_id": observation_event_id(workload.name, "phase", phase),
                }
            )
        except ValidationError:
            logger.warning(
                "unknown phase in a marker", extra={"workload": workload.name, "phase": phase}
            )
            return
        await self._record(workload.job_id, command)

    async def _archive(self, workload: Workload) -> None:
        artifact = await archive_attempt_log(
            self._js,
            self._storage,
            self._common.s3_bucket,
            workload.job_id,
            workload.attempt,
            reply_timeout=self._settings.publish_timeout_seconds,
        )
        ARCHIVES.inc()
        await self._record(
            workload.job_id,
            RecordArtifact(
                actor=ACTOR,
                artifact=artifact,
                event_id=observation_event_id(workload.name, "artifact-stored", LOG_ARCHIVE_NAME),
            ),
        )
        async with self._sessions() as session, session.begin():
            await positions.mark_archived(session, workload.name)

    async def _record(self, job_id: UUID, command: JobCommand) -> None:
        try:
            await self._store.execute(job_id, lambda state: decide(state, command))
        except JobTransitionError as error:
            # The job moved on (ended, or this attempt was superseded): the event has no place.
            logger.info("not recorded on the job", extra={"job_id": str(job_id), "why": str(error)})
