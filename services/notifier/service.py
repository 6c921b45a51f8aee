"""The notifier service: signed webhooks to users' endpoints when their jobs' events happen.

Two loops share the deliveries table:
- the consumer follows JOBS with its durable consumer. For an event that endpoints of
  the job's owner take, it records the message (the job as the API shows it just
  after the event) and a delivery per endpoint, in the transaction that claims the
  event (`claim_event`): a redelivered event records nothing twice.
- the delivery loop claims the due deliveries — a lease each — and sends them, at
  most `endpoint_concurrency` per endpoint and `max_in_flight` in all, so a slow or
  dead endpoint only ever waits on itself. Each outcome moves its delivery on in
  the table (done, failed, or the time of its next attempt), so a restarted
  notifier finds every unconfirmed delivery there and sends it again.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from datetime import timedelta
from uuid import UUID

from nats.aio.client import Client
from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ckrv.events.catalog import JobEvent, parse_event
from ckrv.events.consumer import ConsumerSpec, Delivery, EventConsumer
from ckrv.events.envelope import utc_now
from ckrv.events.history import read_job_history
from ckrv.events.subjects import JOBS_STREAM, JOBS_SUBJECTS
from ckrv.services.common.event_service import Concurrently, Connections
from ckrv.services.common.inbox import claim_event
from ckrv.services.common.sealing import KeyRing, UnsealError
from ckrv.services.notifier.deliveries import (
    DueDelivery,
    FinishedAttempt,
    anyone_subscribed,
    claim_due,
    next_due_at,
    record_attempts,
    record_deliveries,
    subscribed_endpoints,
)
from ckrv.services.notifier.messages import job_event_message
from ckrv.services.notifier.policy import AttemptOutcome, after_attempt
from ckrv.services.notifier.sender import WebhookSender
from ckrv.services.notifier.settings import NotifierSettings
from ckrv.services.notifier.signing import open_secret, signature_header, signing_key

logger = logging.getLogger(__name__)

CONSUMER = "notifier"
# A claimed delivery is sent again if its attempt has not ended this long after its timeout.
LEASE_MARGIN_SECONDS = 5.0
# The shortest pause between two passes that found nothing to claim, so none spins.
MIN_PASS_INTERVAL_SECONDS = 0.01
# Outcomes written in one transaction at most; under load they queue up while one is written.
MAX_OUTCOMES_PER_WRITE = 500

ATTEMPTS = Counter(
    "ckrv_webhook_attempts_total", "Webhook delivery attempts by outcome.", ["outcome"]
)
DISABLED = Counter(
    "ckrv_webhook_endpoints_disabled_total",
    "Endpoints the notifier disabled, by reason.",
    ["reason"],
)


def notifier_spec() -> ConsumerSpec:
    return ConsumerSpec(
        durable=CONSUMER,
        stream=JOBS_STREAM,
        # Every job event: an endpoint may take any type.
        filter_subjects=(JOBS_SUBJECTS,),
        retry_delays=(0.2, 1.0, 5.0, 30.0),
        max_deliver=10,
        fetch_timeout_seconds=0.5,
        # One message a fetch, as the dispatcher's: a lone terminal event is not held back
        # waiting for a batch to fill.
        batch_size=1,
        ack_wait_seconds=30.0,
    )


class Notifier:
    """The notifier's work, given its connections (the service wires them up)."""

    def __init__(
        self,
        *,
        settings: NotifierSettings,
        sessions: async_sessionmaker[AsyncSession],
        nc: Client,
        keys: KeyRing,
        sender: WebhookSender,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._nc = nc
        self._keys = keys
        self._sender = sender
        self._random = random.SystemRandom()
        self._in_flight: dict[UUID, int] = {}
        self._attempts: set[asyncio.Task[None]] = set()
        self._outcomes: asyncio.Queue[FinishedAttempt] = asyncio.Queue()
        self.wake = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Follow JOBS and send what is due, until `stop`."""
        consumer = EventConsumer(self._nc.jetstream(), notifier_spec(), parse_event, self.handle)
        await Concurrently(consumer.run, self.deliver_until).run(stop)

    # Recording deliveries --------------------------------------------------------------

    async def handle(self, delivery: Delivery[JobEvent]) -> None:
        event = delivery.payload
        async with self._sessions() as session:
            if not await anyone_subscribed(session, event.type):
                return
        history = await read_job_history(self._nc, event.job_id)
        made = job_event_message(event, delivery.stream_sequence, history)
        if made is None:
            return
        async with self._sessions() as session, session.begin():
            endpoints = await subscribed_endpoints(
                session, made.owner, event.type, event.occurred_at
            )
            if not endpoints or not await claim_event(session, CONSUMER, event.id):
                return
            await record_deliveries(session, made.message, endpoints, utc_now())
        logger.info(
            "deliveries recorded",
            extra={"event_id": str(event.id), "type": event.type, "endpoints": len(endpoints)},
        )
        self.wake.set()

    # Sending them ----------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return len(self._attempts)

    async def deliver_until(self, stop: asyncio.Event) -> None:
        """Claim and send due deliveries until `stop`; then let the attempts in flight end."""
        recorder = asyncio.create_task(self._record_outcomes(), name="webhook outcomes")
        try:
            while not stop.is_set():
                self.wake.clear()
                pause = self._settings.poll_interval_seconds
                try:
                    pause = await self.deliver_due()
                except Exception:
                    logger.exception("delivery pass failed")
                waiting = [
                    asyncio.create_task(self.wake.wait()),
                    asyncio.create_task(stop.wait()),
                ]
                await asyncio.wait(waiting, timeout=pause, return_when=asyncio.FIRST_COMPLETED)
                for task in waiting:
                    task.cancel()
            # Cut short by the runner's shutdown timeout, an attempt's lease runs out and
            # the next notifier sends it again.
            if self._attempts:
                await asyncio.wait(self._attempts)
            await self._outcomes.join()
        finally:
            recorder.cancel()

    async def deliver_due(self) -> float:
        """Start attempts for the due deliveries there is room for; seconds until the next pass."""
        settings = self._settings
        per_endpoint = settings.endpoint_concurrency
        capacity = settings.max_in_flight - self.in_flight
        if capacity <= 0:
            return settings.poll_interval_seconds  # woken when an attempt ends
        now = utc_now()
        lease_until = now + timedelta(
            seconds=settings.attempt_timeout_seconds + LEASE_MARGIN_SECONDS
        )
        async with self._sessions() as session, session.begin():
            claimed = await claim_due(
                session,
                now=now,
                lease_until=lease_until,
                capacity=capacity,
                free_by_endpoint={
                    endpoint: per_endpoint - count for endpoint, count in self._in_flight.items()
                },
                per_endpoint=per_endpoint,
            )
        for due in claimed:
            self._start(due)
        if len(claimed) == capacity:
            return 0.0  # more may be due
        saturated = [
            endpoint for endpoint, count in self._in_flight.items() if count >= per_endpoint
        ]
        async with self._sessions() as session:
            earliest = await next_due_at(session, saturated)
        if earliest is None:
            return settings.poll_interval_seconds
        until_due = (earliest - utc_now()).total_seconds()
        return min(max(until_due, MIN_PASS_INTERVAL_SECONDS), settings.poll_interval_seconds)

    def _start(self, due: DueDelivery) -> None:
        self._in_flight[due.endpoint_id] = self._in_flight.get(due.endpoint_id, 0) + 1
        task = asyncio.create_task(self._attempt(due), name=f"webhook delivery {due.id}")
        self._attempts.add(task)
        task.add_done_callback(lambda finished: self._finished(due.endpoint_id, finished))

    def _finished(self, endpoint_id: UUID, task: asyncio.Task[None]) -> None:
        self._attempts.discard(task)
        remaining = self._in_flight.pop(endpoint_id) - 1
        if remaining:
            self._in_flight[endpoint_id] = remaining

    async def _attempt(self, due: DueDelivery) -> None:
        outcome = await self._send(due)
        ATTEMPTS.labels("succeeded" if outcome.succeeded else "failed").inc()
        now = utc_now()
        step = after_attempt(
            outcome,
            failures_before=due.failures,
            now=now,
            retry_delays=self._settings.retry_delays_seconds,
            jitter=self._settings.retry_jitter * self._random.uniform(-1.0, 1.0),
        )
        if not outcome.succeeded:
            logger.info(
                "attempt failed",
                extra={
                    **_about(due),
                    "error": outcome.error,
                    "status": step.status.value,
                    "next_attempt_at": step.next_attempt_at,
                },
            )
        self._outcomes.put_nowait(FinishedAttempt(due, outcome, step, now))

    async def _record_outcomes(self) -> None:
        """Write the attempts' outcomes as they come, many in a transaction under load."""
        while True:
            batch = [await self._outcomes.get()]
            while not self._outcomes.empty() and len(batch) < MAX_OUTCOMES_PER_WRITE:
                batch.append(self._outcomes.get_nowait())
            try:
                async with self._sessions() as session, session.begin():
                    recorded = await record_attempts(
                        session,
                        batch,
                        disable_after_failures=self._settings.disable_after_failures,
                        now=utc_now(),
                    )
            except Exception:
                # Their leases run out and the deliveries are sent again: at least once.
                logger.exception("recording attempts failed", extra={"attempts": len(batch)})
            else:
                for lost in recorded.lost:
                    logger.info(
                        "attempt lost its lease; another one took over", extra=_about(lost.due)
                    )
                for endpoint_id, reason in recorded.disabled.items():
                    DISABLED.labels(reason.value).inc()
                    logger.warning(
                        "endpoint disabled",
                        extra={"endpoint_id": str(endpoint_id), "reason": reason.value},
                    )
            finally:
                for _ in batch:
                    self._outcomes.task_done()
            # Retries due now, and places freed, wait for the next pass.
            self.wake.set()

    async def _send(self, due: DueDelivery) -> AttemptOutcome:
        try:
            keys = [
                signing_key(open_secret(self._keys, due.endpoint_id, sealed))
                for sealed in due.secrets
            ]
        except UnsealError as error:
            logger.error(
                "a signing secret does not open", extra={"endpoint_id": str(due.endpoint_id)}
            )
            return AttemptOutcome(
                None, 0.0, f"not sent: the signing secret cannot be read ({error})"
            )
        message_id = str(due.message_id)
        # Fresh on each attempt: receivers refuse timestamps more than five minutes off.
        timestamp = int(time.time())
        body = due.body.encode()
        headers = {
            "Content-Type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature_header(keys, message_id, timestamp, body),
        }
        return await self._sender.post(due.url, body, headers)


def _about(due: DueDelivery) -> dict[str, object]:
    return {
        "delivery_id": str(due.id),
        "endpoint_id": str(due.endpoint_id),
        "event_id": str(due.message_id),
        "attempt": due.attempt,
    }


async def notifier_work(connections: Connections, settings: NotifierSettings) -> Notifier:
    """The notifier, on the service's connections and a pool of its own for the receivers."""
    sender = WebhookSender(
        cloud=settings.cloud,
        timeout_seconds=settings.attempt_timeout_seconds,
        max_connections=settings.max_in_flight,
    )
    await sender.open()
    connections.resources.push_async_callback(sender.close)
    return Notifier(
        settings=settings,
        sessions=connections.sessions,
        nc=connections.nats,
        keys=connections.common.credential_key_ring(),
        sender=sender,
    )
