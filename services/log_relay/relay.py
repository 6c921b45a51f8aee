"""The relay: follows workloads' output, publishing its lines as entries on `logs.<job_id>`.

Each workload of a job this replica holds the lease of (`leases`) gets a follower
task that reads its output from the saved position, publishes each line's entries
(numbered on from the job's previous attempts), turns the worker's phase markers
into `job.phase-changed` events, and saves the position once JetStream has
acknowledged the entries. When the workload has ended and its output is all
published, the attempt's log is archived and recorded with `job.artifact-stored`.

One job's workloads are followed one at a time, in the order they appear, so that
`seq` runs on from one attempt to the next and a republished entry after a crash
meets its earlier self under the same `Nats-Msg-Id` (`<job_id>:<seq>`, and `seq`
follows from the saved output offset). Replicas share the jobs: every replica sees
every workload the runner reports, and follows those of the jobs it holds the lease
of. It renews its leases every third of their lifetime, and takes leases of jobs
nobody follows, up to its fair share, whenever a workload appears and every claim
interval, so the jobs of a replica that died are taken over once its leases ran out.
A replica stops following a job as soon as it cannot be sure to hold the lease, and
gives the leases back when it stops, for the others to take over at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
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
from ckrv.services.log_relay.leases import Leases
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
DUPLICATES = Counter(
    "ckrv_log_relay_duplicate_entries_total",
    "Entries JetStream already had, and dropped: published again after a restart or a takeover.",
)
LEASED = Gauge("ckrv_log_relay_jobs_leased", "Jobs whose workloads this replica has the lease of.")


@dataclass(frozen=True)
class Workload:
    """A workload whose output the relay follows: one attempt of a job."""

    name: str
    job_id: UUID
    attempt: int


class LeaseLost(Exception):
    """This replica is no longer sure to hold the lease of the job whose workload it follows."""


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
        self._leases = Leases(sessions, settings.lease_ttl_seconds)
        # The runner's workloads, as its watch reports them.
        self._present: dict[str, Workload] = {}
        # Workloads the runner dropped before their log was archived: known from their rows.
        self._orphans: dict[str, Workload] = {}
        # Each job's followers, by workload name.
        self._followers: dict[UUID, dict[str, asyncio.Task[None]]] = {}
        # Workloads whose log is archived: nothing more to do until the runner drops them.
        self._done: set[str] = set()
        self._job_locks: dict[UUID, asyncio.Lock] = {}
        # Set when the jobs may need sharing anew (a workload appeared, a job is done with).
        self._wake = asyncio.Event()

    @property
    def replica(self) -> str:
        """This replica's name, the owner of its leases."""
        return self._leases.name

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the workloads of the jobs leased to this replica until `stop`; then give
        the leases back (positions are saved)."""
        self._present = await self._workloads_at_start()
        ending = asyncio.Event()
        watching = asyncio.create_task(self._watch())
        sharing = asyncio.create_task(self._share(ending))
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({watching, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if watching.done():
                watching.result()  # the runner failed: let the service end and be restarted
        finally:
            # Sharing ends its round rather than being cancelled: a statement cut short may
            # still commit, and a lease it took would outlive the leases given back below.
            ending.set()
            self._wake.set()
            watching.cancel()
            stopping.cancel()
            await asyncio.gather(watching, stopping, sharing, return_exceptions=True)
            # No follower starts from here on. Each stops at its next line even if its
            # cancellation went astray (asyncio.wait_for may swallow one in Python 3.11).
            self._leases.let_go()
            followers = self._all_followers()
            for follower in followers:
                follower.cancel()
            await asyncio.gather(*followers, return_exceptions=True)
            await self._give_leases_back()

    async def _workloads_at_start(self) -> dict[str, Workload]:
        """The runner's workloads; the rows of those it dropped once archived are forgotten."""
        present = {
            status.name: Workload(status.name, status.job_id, status.attempt)
            for status in await self._runner.list()
        }
        async with self._sessions() as session, session.begin():
            await positions.forget_positions(
                session,
                [
                    row.workload_name
                    for row in await positions.list_positions(session)
                    if row.workload_name not in present and row.archived_at is not None
                ],
            )
        return present

    async def _watch(self) -> None:
        async for status in self._runner.watch():
            if status.state is not WorkloadState.GONE:
                workload = Workload(status.name, status.job_id, status.attempt)
                if self._present.setdefault(status.name, workload) is workload:
                    self._wake.set()  # new: its job may be free to take
                self._start_following(workload)
            else:
                self._present.pop(status.name, None)
                if status.name in self._done:
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

    async def _share(self, ending: asyncio.Event) -> None:
        """Keep this replica's leases, and take those of jobs nobody follows, until `ending`."""
        renew_interval = self._settings.lease_ttl_seconds / 3
        renew_at = time.monotonic()
        while not ending.is_set():
            self._wake.clear()
            started = time.monotonic()
            try:
                if started >= renew_at:
                    renew_at = started + renew_interval
                    await self._keep_leases()
                await self._share_jobs()
            except Exception:
                # The leases run out if this goes on; the followers stop, and others take over.
                logger.exception("could not share the jobs with the other replicas")
            next_round = min(renew_at, started + self._settings.claim_interval_seconds)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_round - time.monotonic())):
                    await self._wake.wait()

    async def _keep_leases(self) -> None:
        """Renew this replica's leases (stopping the followers of lost ones); find orphans."""
        await self._leases.announce()
        for job_id in await self._leases.renew():
            logger.warning(
                "a job's lease ran out before it was renewed: stopped following the job",
                extra={"job_id": str(job_id)},
            )
            for follower in self._followers.get(job_id, {}).values():
                follower.cancel()
        async with self._sessions() as session:
            rows = await positions.unfollowed_positions(session, self.replica)
        self._orphans = {
            row.workload_name: Workload(row.workload_name, row.job_id, row.attempt)
            for row in rows
            if row.workload_name not in self._present
        }

    async def _share_jobs(self) -> None:
        """Give back the leases of jobs done with; take free ones up to a fair share; follow."""
        waiting: dict[UUID, list[Workload]] = {}
        for workload in sorted(
            [*self._present.values(), *self._orphans.values()], key=lambda w: w.attempt
        ):
            if workload.name not in self._done:
                waiting.setdefault(workload.job_id, []).append(workload)
        # A later attempt, when there is one, may then go to any replica.
        await self._leases.release(
            [job for job in self._leases.jobs if job not in waiting and job not in self._followers]
        )
        held = self._leases.jobs
        # Each replica tries the others' jobs in an order of its own, so that replicas taking
        # jobs at the same time mostly try different ones.
        others = sorted(
            (job for job in waiting if job not in held), key=lambda job: hash((self.replica, job))
        )
        if others:
            await self._leases.claim(others, jobs=len(waiting.keys() | held))
        LEASED.set(len(self._leases.jobs))
        for workloads in waiting.values():
            for workload in workloads:
                self._start_following(workload)

    async def _give_leases_back(self) -> None:
        try:
            await self._leases.retire()
        except Exception:
            # The other replicas take the jobs over all the same, once the leases ran out.
            logger.exception("could not give the leases back")
        LEASED.set(0)

    def _all_followers(self) -> list[asyncio.Task[None]]:
        return [task for followers in self._followers.values() for task in followers.values()]

    def _start_following(self, workload: Workload) -> None:
        """Follow the workload if its job is leased to this replica, unless followed already
        or done with."""
        name, job_id = workload.name, workload.job_id
        if (
            name in self._done
            or name in self._followers.get(job_id, {})
            or not self._leases.holds(job_id)
        ):
            return
        lock = self._job_locks.setdefault(job_id, asyncio.Lock())
        followers = self._followers.setdefault(job_id, {})
        followers[name] = follower = asyncio.create_task(
            self._follow(workload, lock), name=f"follow {name}"
        )

        def forget(_: asyncio.Task[None]) -> None:
            del followers[name]
            if not followers:
                del self._followers[job_id]
                del self._job_locks[job_id]
                self._wake.set()  # its lease may be given back

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
                    except LeaseLost:
                        logger.warning(
                            "stopped following a workload: its job's lease may have run out",
                            extra={"workload": workload.name},
                        )
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

    def _check_lease(self, workload: Workload) -> None:
        if not self._leases.holds(workload.job_id):
            raise LeaseLost(workload.name)

    async def _resume_point(self, workload: Workload) -> ResumePoint:
        self._check_lease(workload)
        async with self._sessions() as session, session.begin():
            found = await positions.find_position(session, workload.name)
        if found is not None:
            return found
        # A new attempt numbers its entries on from the job's earlier ones.
        first_seq = await last_published_seq(self._js, workload.job_id) + 1
        async with self._sessions() as session, session.begin():
            started = await positions.start_position(
                session,
                workload.name,
                workload.job_id,
                workload.attempt,
                first_seq,
                owner=self.replica,
            )
        if started is None:
            raise LeaseLost(workload.name)
        return started

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
        """Publish the lines' entries, record their phase markers, save the position; next `seq`.

        Each line only while the job's lease surely holds: one that ran out may be another
        replica's already, which goes on from the saved position.
        """
        if not lines:
            return next_seq
        subject = job_log_subject(workload.job_id)
        for line in lines:
            self._check_lease(workload)
            read = read_line(line.data, datetime.now(UTC))
            entries = log_entries(
                read, attempt=workload.attempt, first_seq=next_seq, redact=redactor.redact
            )
            for entry in entries:
                ack = await self._js.publish(
                    subject,
                    entry.model_dump_json().encode(),
                    timeout=self._settings.publish_timeout_seconds,
                    stream=LOGS_STREAM,
                    headers={"Nats-Msg-Id": f"{workload.job_id}:{entry.seq}"},
                )
                if ack.duplicate:
                    DUPLICATES.inc()
            ENTRIES.inc(len(entries))
            OUTPUT_BYTES.inc(len(line.data))
            LAG_SECONDS.observe(max(0.0, (datetime.now(UTC) - read.timestamp).total_seconds()))
            next_seq += len(entries)
            if read.entered_phase is not None:
                await self._record_phase(workload, read.entered_phase)
        async with self._sessions() as session, session.begin():
            saved = await positions.save_progress(
                session,
                workload.name,
                owner=self.replica,
                offset=cutter.offset,
                next_seq=next_seq,
                inside_private_key=redactor.inside_private_key,
            )
        if not saved:
            raise LeaseLost(workload.name)
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
        self._check_lease(workload)
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
            archived = await positions.mark_archived(session, workload.name, owner=self.replica)
        if not archived:
            # Written and recorded all the same; the next holder does it again, to the same effect.
            raise LeaseLost(workload.name)

    async def _record(self, job_id: UUID, command: JobCommand) -> None:
        try:
            await self._store.execute(job_id, lambda state: decide(state, command))
        except JobTransitionError as error:
            # The job moved on (ended, or this attempt was superseded): the event has no place.
            logger.info("not recorded on the job", extra={"job_id": str(job_id), "why": str(error)})
