"""`ckrv.events.subscribe`, and the example service of `docs/event-subscriptions.md`."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any
from uuid import uuid4

import pytest
from nats.aio.client import Client

from ckrv.events.catalog import JobEvent
from ckrv.events.state import (
    ConfirmCancel,
    DispatchJob,
    FailJob,
    QueueJob,
    RequestCancel,
    SubmitJob,
    decide,
)
from ckrv.events.store import JobEventStore
from ckrv.events.subjects import dead_letter_subject
from ckrv.events.subscribe import PermanentError, subscribe, subscription_spec
from tests.unit.events.job_builders import SUBMISSION

pytestmark = pytest.mark.integration

DOCS = Path(__file__).parents[3] / "docs" / "event-subscriptions.md"
ACTOR = "service:test"


def example_module() -> ModuleType:
    """The docs' Python example, as a module."""
    (code,) = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)
    module = ModuleType("outcome_counter")
    exec(compile(code, str(DOCS), "exec"), module.__dict__)
    return module


async def finish(store: JobEventStore, outcome: str) -> None:
    """A job through submission to `outcome` (`failed` or `cancelled`)."""
    job_id = uuid4()
    commands: list[Any] = [SubmitJob(actor=ACTOR, submission=SUBMISSION), QueueJob(actor=ACTOR)]
    if outcome == "failed":
        commands += [
            DispatchJob(actor=ACTOR, runner="local"),
            FailJob(actor=ACTOR, attempt=1, error_code="agent_failed", error_message="exit 1"),
        ]
    else:
        commands += [RequestCancel(actor=ACTOR), ConfirmCancel(actor=ACTOR)]
    for command in commands:
        await store.execute(job_id, partial(decide, command=command))


async def counted(outcomes: Counter[str], *, failed: int, cancelled: int) -> None:
    deadline = asyncio.get_running_loop().time() + 15
    while outcomes["job.failed"] < failed or outcomes["job.cancelled"] < cancelled:
        assert asyncio.get_running_loop().time() < deadline, outcomes
        await asyncio.sleep(0.05)


async def test_the_documented_example_counts_how_jobs_end(
    nc: Client, provisioned_nats_url: str
) -> None:
    store = JobEventStore(nc)
    for outcome in ("failed", "cancelled", "failed"):
        await finish(store, outcome)
    example = example_module()
    outcomes: Counter[str] = Counter()
    stop = asyncio.Event()
    running = asyncio.create_task(example.count_outcomes(provisioned_nats_url, outcomes, stop))
    await counted(outcomes, failed=2, cancelled=1)
    # The consumer follows new events too.
    cancelled_before = outcomes["job.cancelled"]
    await finish(store, "cancelled")
    await counted(outcomes, failed=2, cancelled=cancelled_before + 1)
    stop.set()
    await running
    # Other tests on this stream end jobs too; these four are at least counted, nothing else.
    assert set(outcomes) <= {"job.failed", "job.cancelled", "job.succeeded", "job.timed-out"}


async def test_a_handler_that_gives_up_parks_the_event_with_its_reason(nc: Client) -> None:
    name = f"refuser-{uuid4().hex[:8]}"
    store = JobEventStore(nc)
    parked = await nc.jetstream().subscribe(dead_letter_subject(name), ordered_consumer=True)
    stop = asyncio.Event()

    async def refuse(event: JobEvent) -> None:
        stop.set()
        raise PermanentError(f"cannot take {event.type}")

    running = asyncio.create_task(subscribe(nc, name, refuse, stop, types={"job.cancel-requested"}))
    await asyncio.sleep(0.5)  # the consumer exists: it starts with events from now on
    await finish(store, "cancelled")
    message = await parked.next_msg(timeout=15)
    await running
    assert message.headers is not None
    assert "cannot take job.cancel-requested" in message.headers["Ckrv-Dead-Letter-Reason"]


def test_unknown_event_types_are_refused() -> None:
    with pytest.raises(ValueError, match=r"job\.exploded"):
        subscription_spec("x", {"job.exploded"})
    spec = subscription_spec("x", {"job.failed", "job.cancelled"})
    assert spec.filter_subjects == ("jobs.*.cancelled", "jobs.*.failed")
