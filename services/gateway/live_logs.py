"""Live lines and ends of followed jobs, fanned out to the gateway's log streams.

One channel per followed job, however many streams follow it: an ordered
JetStream consumer on `logs.<job_id>` (new lines, with their stream sequences)
and a subscription to `jobs.<job_id>.*` (the job's events, folded into its
status). The channel hands each line to every follower without waiting for
any of them: a follower holds a bounded number of lines, and one that falls
further behind drops them and reads on from JetStream at its own pace
(`Follower.overflowed`), so no client can stall another or grow the gateway's
memory. The channel closes with its last follower.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from uuid import UUID

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import DeliverPolicy
from prometheus_client import Counter, Gauge

from ckrv.events.state import ApiStatus, api_status
from ckrv.events.store import JobEventStore
from ckrv.events.subjects import LOGS_STREAM, job_log_subject, job_subjects
from ckrv.services.gateway.log_history import StoredLine

logger = logging.getLogger(__name__)

# After a failed read of a job's events, the next try waits this long.
STATUS_RETRY_SECONDS = 1.0

FOLLOWERS = Gauge("ckrv_gateway_log_followers", "Log streams following a job's live lines.")
CHANNELS = Gauge("ckrv_gateway_log_channels", "Jobs whose live lines the gateway reads.")
CATCH_UPS = Counter(
    "ckrv_gateway_log_catch_ups_total",
    "Times a log stream fell behind its live lines and read on from JetStream instead.",
)


class Follower:
    """One log stream's share of a followed job: the live lines it has not taken yet."""

    def __init__(self, channel: JobChannel, capacity: int) -> None:
        self.channel = channel
        self._capacity = capacity
        self._lines: deque[StoredLine] = deque()
        self._woken = asyncio.Event()
        self.overflowed = False

    def offer(self, line: StoredLine) -> None:
        if self.overflowed:
            return
        if len(self._lines) >= self._capacity:
            # JetStream keeps every line: the stream reads on from there instead.
            self._lines.clear()
            self.overflowed = True
            CATCH_UPS.inc()
        else:
            self._lines.append(line)
        self._woken.set()

    def wake(self) -> None:
        self._woken.set()

    def take(self, after_sequence: int) -> list[StoredLine]:
        """The held lines past `after_sequence` (earlier ones were read from JetStream)."""
        taken = [line for line in self._lines if (line.sequence or 0) > after_sequence]
        self._lines.clear()
        return taken

    def restart(self) -> None:
        """Hold lines again after an overflow; the caller reads what it missed from JetStream."""
        self._lines.clear()
        self.overflowed = False

    async def wait(self, seconds: float) -> None:
        """Until a line or news arrives, or `seconds` pass."""
        try:
            await asyncio.wait_for(self._woken.wait(), seconds)
        except TimeoutError:
            return
        finally:
            self._woken.clear()


class JobChannel:
    """A followed job's live lines and status, shared by its followers."""

    def __init__(self, nc: Client, store: JobEventStore, job_id: UUID) -> None:
        self.job_id = job_id
        self.followers: set[Follower] = set()
        # The API status once the job ended, and when it ended on the event loop's clock.
        self.ended_status: ApiStatus | None = None
        self._ended_at = 0.0
        self._last_line_at = 0.0
        self._nc = nc
        self._store = store
        self._loop = asyncio.get_running_loop()
        self._subscriptions: list[Subscription] = []
        self._status_stale = False
        self._status_reader: asyncio.Task[None] | None = None
        self.opening = self._loop.create_task(self._open())

    async def _open(self) -> None:
        """Subscribe first, then read the status: no line and no event falls in between."""
        js = self._nc.jetstream()
        self._subscriptions.append(
            await self._nc.subscribe(job_subjects(self.job_id), cb=self._on_event)
        )
        self._subscriptions.append(
            await js.subscribe(
                job_log_subject(self.job_id),
                stream=LOGS_STREAM,
                cb=self._on_line,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.NEW,
            )
        )
        await self._read_status()

    async def close(self) -> None:
        # Whatever the opening subscribed must be unsubscribed, even if it failed half-way.
        await asyncio.gather(self.opening, return_exceptions=True)
        if self._status_reader is not None:
            self._status_reader.cancel()
        for subscription in self._subscriptions:
            await subscription.unsubscribe()

    def loop_time(self) -> float:
        return self._loop.time()

    def seconds_to_end(self, quiet_seconds: float) -> float | None:
        """How long until a follower ends its stream: once the job ended and no line came for
        `quiet_seconds`; None while the job runs."""
        if self.ended_status is None:
            return None
        quiet_since = max(self._ended_at, self._last_line_at)
        return quiet_since + quiet_seconds - self._loop.time()

    async def _on_line(self, message: Msg) -> None:
        line = StoredLine(message.metadata.sequence.stream, message.data)
        self._last_line_at = self._loop.time()
        for follower in self.followers:
            follower.offer(line)

    async def _on_event(self, _: Msg) -> None:
        # The event alone does not tell the status (a late event changes nothing): the
        # job's folded history does. Events that come while it is read make it read again.
        self._status_stale = True
        if self._status_reader is None or self._status_reader.done():
            self._status_reader = asyncio.create_task(self._read_status_until_current())

    async def _read_status_until_current(self) -> None:
        while self._status_stale:
            self._status_stale = False
            try:
                await self._read_status()
            except Exception:
                logger.warning("could not read the job's status", exc_info=True)
                self._status_stale = True
                await asyncio.sleep(STATUS_RETRY_SECONDS)

    async def _read_status(self) -> None:
        if self.ended_status is not None:
            return
        state = (await self._store.load(self.job_id)).state
        if not state.is_terminal:
            return
        # A job that ended a while ago has had its quiet time already.
        ago = (datetime.now(UTC) - (state.completed_at or datetime.now(UTC))).total_seconds()
        self._ended_at = self._loop.time() - max(ago, 0.0)
        self.ended_status = api_status(state)
        for follower in self.followers:
            follower.wake()


class LiveLogs:
    """The gateway's channels, opened for a job's first follower and closed after its last."""

    def __init__(self, nc: Client, store: JobEventStore, *, follower_capacity: int) -> None:
        self._nc = nc
        self._store = store
        self._capacity = follower_capacity
        self._channels: dict[UUID, JobChannel] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self.closed = False

    @asynccontextmanager
    async def follow(self, job_id: UUID) -> AsyncIterator[Follower]:
        """A follower of the job for the duration of the block."""
        channel = self._channels.get(job_id)
        if channel is None:
            channel = self._channels[job_id] = JobChannel(self._nc, self._store, job_id)
            CHANNELS.inc()
        follower = Follower(channel, self._capacity)
        channel.followers.add(follower)
        FOLLOWERS.inc()
        try:
            # Shielded: a follower that goes away while the channel opens leaves it to the rest.
            await asyncio.shield(channel.opening)
            yield follower
        finally:
            self._leave(follower)

    def _leave(self, follower: Follower) -> None:
        channel = follower.channel
        channel.followers.discard(follower)
        FOLLOWERS.dec()
        if not channel.followers and self._channels.get(channel.job_id) is channel:
            del self._channels[channel.job_id]
            CHANNELS.dec()
            # Closing talks to NATS; the follower's request may be over by then.
            closing = asyncio.get_running_loop().create_task(channel.close())
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    def close(self) -> None:
        """End every stream (the gateway is stopping); their clients reconnect elsewhere."""
        self.closed = True
        for channel in self._channels.values():
            for follower in channel.followers:
                follower.wake()
