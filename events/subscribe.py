"""Consuming job events in an internal service, in a few lines.

```python
from ckrv.events.subscribe import subscribe

async def on_event(event: JobEvent) -> None:
    ...  # idempotent: the same event may come twice

await subscribe(nc, "billing-exporter", on_event, stop, types={"job.succeeded"})
```

The contract (also in `schemas/asyncapi.yaml`):
- at least once: an event is delivered again until the handler returns without an
  error, so a handler must be idempotent; deduplicate on `event.id` (the
  `services/common/inbox.py` helper does it in the same PostgreSQL transaction as
  the handler's effect);
- in order per job: a job's events come in the order they happened (the JOBS
  stream's order); there is no order between different jobs;
- durable: the consumer is named, so a restarted service resumes after the last
  event it acknowledged, and several replicas with the same name share the work;
- a handler raising `TransientError` (optionally with `retry_after`) is retried
  later; `PermanentError`, or an event that cannot be read, parks the message on
  `deadletter.<name>` with the reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection

from nats.aio.client import Client
from nats.js.api import DeliverPolicy

from ckrv.events.catalog import EVENT_TYPES, JobEvent, parse_event
from ckrv.events.consumer import (
    ConsumerSpec,
    Delivery,
    EventConsumer,
    PermanentError,
    TransientError,
)
from ckrv.events.subjects import EVENT_TYPE_PREFIX, JOBS_STREAM, JOBS_SUBJECTS

__all__ = ["PermanentError", "TransientError", "subscribe", "subscription_spec"]


def subscription_spec(
    name: str, types: Collection[str] = (), *, from_start: bool = False
) -> ConsumerSpec:
    """The durable consumer `name` of the JOBS events of `types` (all when empty)."""
    unknown = sorted(set(types) - EVENT_TYPES.keys())
    if unknown:
        raise ValueError(f"unknown event types: {', '.join(unknown)}")
    subjects = tuple(
        f"jobs.*.{event_type.removeprefix(EVENT_TYPE_PREFIX)}" for event_type in sorted(types)
    )
    return ConsumerSpec(
        durable=name,
        stream=JOBS_STREAM,
        filter_subjects=subjects or (JOBS_SUBJECTS,),
        # One event a fetch: a larger fetch holds a lone event until it fills or times out.
        batch_size=1,
        fetch_timeout_seconds=0.5,
        deliver_policy=DeliverPolicy.ALL if from_start else DeliverPolicy.NEW,
    )


async def subscribe(
    nc: Client,
    name: str,
    handler: Callable[[JobEvent], Awaitable[None]],
    stop: asyncio.Event,
    *,
    types: Collection[str] = (),
    from_start: bool = False,
) -> None:
    """Call `handler` for each job event of `types` until `stop` is set.

    A new consumer starts with the events published from now on, or with the
    first event on the stream when `from_start`; an existing one resumes where it was.
    """

    async def handle(delivery: Delivery[JobEvent]) -> None:
        await handler(delivery.payload)

    spec = subscription_spec(name, types, from_start=from_start)
    await EventConsumer(nc.jetstream(), spec, parse_event, handle).run(stop)
