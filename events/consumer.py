"""Durable pull consumers with explicit acks, bounded retries and a dead-letter subject.

`EventConsumer` fetches from a durable consumer that every replica of a service
shares, so each message is handled once per service. The handler's outcome
decides the message's fate:

- returns: ack;
- raises `TransientError` (or anything unexpected): `nak` with a growing delay,
  until the consumer's delivery limit, then dead-letter;
- raises `PermanentError`, or the message cannot be decoded: dead-letter now.

Dead letters go to `deadletter.<consumer>` (kept by the DEADLETTER stream) with the
original payload and the reason in headers, and the consumer keeps going.

Stopping is orderly: once `stop` is set the consumer fetches nothing more (a fetch
under way is abandoned), the handlers at work finish and their messages meet their
fate as above, and only then does `run` return, so the service closes its connections
after the last ack. A handler cut off by cancellation (the service's shutdown timeout)
hands its message back at once, for another replica to take without waiting for the
ack wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from nats.aio.msg import Msg
from nats.errors import ConnectionReconnectingError, NoRespondersError
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import ServiceUnavailableError
from prometheus_client import Counter, Gauge, Histogram

from ckrv.events.subjects import dead_letter_subject

logger = logging.getLogger(__name__)

T = TypeVar("T")

MESSAGES = Counter(
    "ckrv_consumer_messages_total",
    "Messages a consumer finished with, by outcome (acked, retried, dead_lettered).",
    ["consumer", "outcome"],
)
PENDING = Gauge(
    "ckrv_consumer_lag_messages",
    "Messages in the stream the consumer has not been delivered yet.",
    ["consumer"],
)
HANDLE_SECONDS = Histogram(
    "ckrv_consumer_handle_seconds", "Time the handler took per message.", ["consumer"]
)

# JetStream out of reach for a moment (a busy or restarting server, a leader election, a
# reconnect) is waited out rather than ending the service: tried again after these pauses,
# the last one repeating.
UNREACHABLE_RETRY_SECONDS = (0.5, 1.0, 2.0, 5.0)
_UNREACHABLE = (NoRespondersError, ServiceUnavailableError, ConnectionReconnectingError)

# How long an ack may take to be confirmed, as long as JetStream's API calls may take.
ACK_TIMEOUT_SECONDS = 5.0

DEAD_LETTER_REASON = "Ckrv-Dead-Letter-Reason"
ORIGINAL_SUBJECT = "Ckrv-Original-Subject"
ORIGINAL_STREAM = "Ckrv-Original-Stream"
ORIGINAL_SEQUENCE = "Ckrv-Original-Sequence"
DELIVERIES = "Ckrv-Deliveries"
MAX_HEADER_VALUE = 2000


class TransientError(Exception):
    """The handler could not finish now but may later (a peer is down, a lock is held)."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(Exception):
    """The message can never be handled; retrying would only repeat the failure."""


@dataclass(frozen=True)
class Delivery(Generic[T]):
    """One decoded message as the handler sees it."""

    payload: T
    subject: str
    stream_sequence: int
    num_delivered: int


@dataclass(frozen=True)
class ConsumerSpec:
    """The durable consumer's identity and delivery policy."""

    durable: str
    stream: str
    filter_subjects: tuple[str, ...]
    max_deliver: int = 5
    ack_wait_seconds: float = 30.0
    retry_delays: tuple[float, ...] = (1.0, 5.0, 30.0, 120.0)
    batch_size: int = 32
    fetch_timeout_seconds: float = 1.0
    max_ack_pending: int = 1000
    deliver_policy: DeliverPolicy = field(default=DeliverPolicy.ALL)
    # After a fetch that brought several messages but did not fill a batch (the stream is
    # busy), wait this long before the next one, so that it takes what arrived meanwhile at
    # once: fewer, larger batches for a little latency. A lone message never waits for it.
    linger_seconds: float = 0.0
    # Fetches handled at once, each by a pull of its own on the shared consumer, as replicas
    # do: for handlers that mostly wait on NATS and PostgreSQL.
    handlers: int = 1

    def retry_delay(self, num_delivered: int) -> float:
        return self.retry_delays[min(num_delivered, len(self.retry_delays)) - 1]

    def config(self) -> ConsumerConfig:
        return ConsumerConfig(
            name=self.durable,
            durable_name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait_seconds,
            # One more than we retry ourselves: the last delivery is the one that dead-letters.
            max_deliver=self.max_deliver + 1,
            max_ack_pending=self.max_ack_pending,
            deliver_policy=self.deliver_policy,
            filter_subjects=list(self.filter_subjects),
        )


class EventConsumer(Generic[T]):
    """Runs `handler` for every message of a durable pull consumer until stopped."""

    def __init__(
        self,
        js: JetStreamContext,
        spec: ConsumerSpec,
        decode: Callable[[bytes], T],
        handler: Callable[[Delivery[T]], Awaitable[None]],
    ) -> None:
        self._js = js
        self._spec = spec
        self._decode = decode
        self._handler = handler
        self._dead_letters = dead_letter_subject(spec.durable)

    async def ensure_consumer(self) -> None:
        """Create the durable consumer, or bring an existing one up to date (same call)."""
        await self._js.add_consumer(self._spec.stream, self._spec.config())

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch and handle until `stop` is set; return once the messages in hand are done.

        If one of the spec's `handlers` fails, the others are cancelled (handing back
        their messages) and the failure is raised once they have ended.
        """
        if not await self._ensure_consumer_when_reachable(stop):
            return
        async with asyncio.TaskGroup() as handlers:
            for _ in range(self._spec.handlers):
                handlers.create_task(self._fetch_and_handle(stop))

    async def _ensure_consumer_when_reachable(self, stop: asyncio.Event) -> bool:
        """Create the consumer, waiting out JetStream out of reach; False if stopped first."""
        attempts = 0
        while True:
            try:
                await self.ensure_consumer()
                return True
            except (TimeoutError, *_UNREACHABLE) as error:
                if not await self._pause_while_unreachable(
                    "create the consumer", error, attempts, stop
                ):
                    return False
                attempts += 1

    async def _fetch_and_handle(self, stop: asyncio.Event) -> None:
        subscription = await self._js.pull_subscribe_bind(
            self._spec.durable, stream=self._spec.stream
        )
        try:
            while (batch := await self._fetch(subscription, stop)) is not None:
                with self._unsettled_comes_back():
                    await self._handle_fetched(batch, stop)
                if 1 < len(batch) < self._spec.batch_size and self._spec.linger_seconds > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), self._spec.linger_seconds)
        finally:
            # The server drops a pull request nobody listens to any more: an abandoned
            # fetch brings nothing after this.
            await subscription.unsubscribe()

    async def _fetch(
        self, subscription: JetStreamContext.PullSubscription, stop: asyncio.Event
    ) -> list[Msg] | None:
        """The next fetch's messages, or None once `stop` is set (the fetch abandoned)."""
        unreachable = 0
        while not stop.is_set():
            fetching = asyncio.create_task(
                subscription.fetch(self._spec.batch_size, timeout=self._spec.fetch_timeout_seconds)
            )
            stopping = asyncio.create_task(stop.wait())
            try:
                await asyncio.wait({fetching, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (fetching, stopping):
                    task.cancel()
                await asyncio.gather(fetching, stopping, return_exceptions=True)
            if fetching.cancelled():
                break
            try:
                # Messages that came as `stop` was set are handed back by the caller.
                return fetching.result()
            except TimeoutError:  # nothing arrived within the fetch window
                unreachable = 0
            except _UNREACHABLE as error:
                if not await self._pause_while_unreachable("fetch", error, unreachable, stop):
                    return None
                unreachable += 1
        return None

    async def _pause_while_unreachable(
        self, action: str, error: Exception, attempts: int, stop: asyncio.Event
    ) -> bool:
        """Wait before trying `action` again; False if `stop` was set meanwhile."""
        pause = UNREACHABLE_RETRY_SECONDS[min(attempts, len(UNREACHABLE_RETRY_SECONDS) - 1)]
        logger.warning(
            "cannot %s: JetStream did not answer (%s); trying again in %g s",
            action,
            type(error).__name__,
            pause,
            extra={"consumer": self._spec.durable},
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), pause)
        return not stop.is_set()

    async def _handle_fetched(self, batch: list[Msg], stop: asyncio.Event) -> None:
        """Handle a fetch's messages one after the other."""
        for position, message in enumerate(batch):
            if stop.is_set():
                await self._hand_back(batch[position:])
                break
            await self.handle(message)

    async def _hand_back(self, messages: Sequence[Msg]) -> None:
        # At once, so another replica takes them now instead of after the ack wait.
        for unhandled in messages:
            with self._unsettled_comes_back():
                await unhandled.nak()

    async def handle(self, message: Msg) -> None:
        """Decide one message's fate from the handler's outcome."""
        with self._unsettled_comes_back():
            delivery = await self._decoded(message)
            if delivery is not None:
                await self._handle_delivery(message, delivery)

    @contextlib.contextmanager
    def _unsettled_comes_back(self) -> Iterator[None]:
        """Around telling JetStream a message's fate (ack, nak, dead letter), which fails when
        it is slow or out of reach: the message is not lost but delivered again after the ack
        wait, and handlers take a delivery they have seen before in their stride (the inbox).
        No reason to end the service."""
        try:
            yield
        except NatsError as error:
            logger.warning(
                "a message's fate did not reach JetStream (%s); it will be delivered again",
                type(error).__name__,
                extra={"consumer": self._spec.durable},
            )

    async def _decoded(self, message: Msg) -> Delivery[T] | None:
        """The message as the handler sees it; None once dead-lettered as undecodable."""
        metadata = message.metadata
        PENDING.labels(self._spec.durable).set(metadata.num_pending)
        try:
            payload = self._decode(message.data)
        except ValueError as error:
            await self._dead_letter(message, f"undecodable message: {error}")
            return None
        return Delivery(
            payload=payload,
            subject=message.subject,
            stream_sequence=metadata.sequence.stream,
            num_delivered=metadata.num_delivered,
        )

    async def _handle_delivery(self, message: Msg, delivery: Delivery[T]) -> None:
        started = time.perf_counter()
        try:
            async with self._in_hand(message):
                await self._handler(delivery)
        except PermanentError as error:
            await self._dead_letter(message, f"permanent failure: {error}")
        except Exception as error:
            await self._retry_or_dead_letter(message, delivery, error)
        else:
            await self._ack(message)
        finally:
            HANDLE_SECONDS.labels(self._spec.durable).observe(time.perf_counter() - started)

    async def _ack(self, message: Msg) -> None:
        # Wait for the server to record the ack: once the next message starts, this one
        # must not come back after a crash.
        await message.ack_sync(timeout=ACK_TIMEOUT_SECONDS)
        MESSAGES.labels(self._spec.durable, "acked").inc()

    async def _retry_or_dead_letter(
        self, message: Msg, delivery: Delivery[T], error: Exception
    ) -> None:
        if delivery.num_delivered >= self._spec.max_deliver:
            await self._dead_letter(
                message, f"gave up after {delivery.num_delivered} deliveries: {error!r}"
            )
            return
        delay = (
            error.retry_after
            if isinstance(error, TransientError) and error.retry_after is not None
            else self._spec.retry_delay(delivery.num_delivered)
        )
        log = logger.warning if isinstance(error, TransientError) else logger.exception
        log(
            "handler failed; retrying",
            extra={
                "consumer": self._spec.durable,
                "subject": delivery.subject,
                "stream_sequence": delivery.stream_sequence,
                "delivery": delivery.num_delivered,
                "retry_in_seconds": delay,
            },
        )
        await message.nak(delay=delay)
        MESSAGES.labels(self._spec.durable, "retried").inc()

    async def _dead_letter(self, message: Msg, reason: str) -> None:
        metadata = message.metadata
        stream_sequence = metadata.sequence.stream
        headers = {
            # The same message dead-lettered twice (a crash before the term) is stored once.
            "Nats-Msg-Id": f"{self._spec.durable}:{metadata.stream}:{stream_sequence}",
            DEAD_LETTER_REASON: _header_value(reason),
            ORIGINAL_SUBJECT: message.subject,
            ORIGINAL_STREAM: metadata.stream,
            ORIGINAL_SEQUENCE: str(stream_sequence),
            DELIVERIES: str(metadata.num_delivered),
        }
        await self._js.publish(self._dead_letters, message.data, headers=headers)
        await message.term()
        MESSAGES.labels(self._spec.durable, "dead_lettered").inc()
        logger.error(
            "message dead-lettered",
            extra={
                "consumer": self._spec.durable,
                "subject": message.subject,
                "stream_sequence": stream_sequence,
                "reason": reason,
            },
        )

    @contextlib.asynccontextmanager
    async def _in_hand(self, *messages: Msg) -> AsyncIterator[None]:
        """While a handler works on `messages`: tell the server they are still being worked
        on (a slow handler keeps them), and hand them back if the handler is cut off."""

        async def beat() -> None:
            while True:
                await asyncio.sleep(self._spec.ack_wait_seconds / 2)
                for message in messages:
                    await message.in_progress()

        heartbeat = asyncio.create_task(beat())
        try:
            yield
        except asyncio.CancelledError:
            await self._hand_back(messages)
            raise
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat


class BatchEventConsumer(EventConsumer[T]):
    """Like `EventConsumer`, but the handler takes every message of a fetch at once.

    A handler can then do the work of many messages together (one database transaction
    for all of them). They are acked together once it returns. If it raises, each message
    is handled again on its own, as a batch of one, so a message that cannot be handled
    meets its own fate (retried, dead-lettered) without taking the others with it.
    """

    def __init__(
        self,
        js: JetStreamContext,
        spec: ConsumerSpec,
        decode: Callable[[bytes], T],
        handler: Callable[[Sequence[Delivery[T]]], Awaitable[None]],
    ) -> None:
        async def handle_one(delivery: Delivery[T]) -> None:
            await handler([delivery])

        super().__init__(js, spec, decode, handle_one)
        self._batch_handler = handler

    async def _handle_fetched(self, batch: list[Msg], stop: asyncio.Event) -> None:
        if stop.is_set():
            await self._hand_back(batch)
            return
        decoded = [
            (message, delivery)
            for message in batch
            if (delivery := await self._decoded(message)) is not None
        ]
        if len(decoded) <= 1:
            for message, delivery in decoded:
                await self._handle_delivery(message, delivery)
            return
        messages = [message for message, _ in decoded]
        started = time.perf_counter()
        try:
            async with self._in_hand(*messages):
                await self._batch_handler([delivery for _, delivery in decoded])
        except Exception:
            logger.warning(
                "batch handler failed; handling its messages one at a time",
                extra={"consumer": self._spec.durable, "messages": len(decoded)},
                exc_info=True,
            )
            for message, delivery in decoded:
                await self._handle_delivery(message, delivery)
            return
        finally:
            elapsed = time.perf_counter() - started
            for _ in decoded:
                HANDLE_SECONDS.labels(self._spec.durable).observe(elapsed)
        await asyncio.gather(*(self._ack(message) for message in messages))


def _header_value(text: str) -> str:
    """Header values cannot hold line breaks and should stay short."""
    return " ".join(text.split())[:MAX_HEADER_VALUE]
