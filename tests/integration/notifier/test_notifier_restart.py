"""`ckrv-cloud serve notifier` killed while retries wait: none is lost, nothing confirmed is resent.

The receiver refuses the first attempt of some jobs' messages. Once every one of
those waits for its retry (and the other jobs' messages are confirmed), the
notifier gets SIGKILL; two more jobs end while it is down. Started again, it
must deliver every message exactly once successfully, resending only the ones
never confirmed.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from uuid import UUID

import httpx
import pytest

from ckrv.services.stack.ports import free_ports
from ckrv.services.stack.service_process import ServiceProcess
from tests.integration.notifier.conftest import (
    WebhookStack,
    add_webhook,
    complete,
    deliveries,
    event_id,
    submit,
    wait_until,
)
from tests.webhook_receiver import Received, WebhookReceiver

pytestmark = pytest.mark.integration

RETRY_DELAY_SECONDS = 2.0


async def test_a_notifier_killed_mid_retry_loses_nothing_and_resends_only_the_unconfirmed(
    webhook_stack: WebhookStack, user: httpx.AsyncClient, tmp_path: Path
) -> None:
    (port,) = free_ports(1)
    notifier = ServiceProcess(
        "notifier",
        port=port,
        log_dir=tmp_path,
        connections=webhook_stack.environment()
        | {
            "CKRV_NOTIFIER_RETRY_DELAYS_SECONDS": f"[{RETRY_DELAY_SECONDS}, {RETRY_DELAY_SECONDS}]",
            "CKRV_NOTIFIER_RETRY_JITTER": "0",
            "CKRV_NOTIFIER_POLL_INTERVAL_SECONDS": "0.1",
        },
        shutdown_timeout_seconds=5,
    )
    flaky: set[str] = set()

    async def refuse_flaky_first(earlier: int, request: Received) -> int:
        return 500 if earlier == 0 and request.payload()["data"]["id"] in flaky else 200

    async def end_jobs(healthy: int, refused_first: int) -> tuple[list[UUID], list[UUID]]:
        healthy_jobs = [await submit(user) for _ in range(healthy)]
        flaky_jobs = [await submit(user) for _ in range(refused_first)]
        flaky.update(str(job_id) for job_id in flaky_jobs)
        for job_id in healthy_jobs + flaky_jobs:
            await complete(webhook_stack, job_id)
        return healthy_jobs, flaky_jobs

    def states_are(*expected: tuple[str, int]) -> Callable[[], Awaitable[bool]]:
        """Whether the deliveries' (status, attempts) are these, in any order."""

        async def check() -> bool:
            found = await deliveries(user, hook["id"])
            return sorted((d["status"], d["attempts"]) for d in found) == sorted(expected)

        return check

    async with WebhookReceiver(refuse_flaky_first) as receiver:
        hook = await add_webhook(user, receiver.url)
        try:
            await notifier.start()
            healthy, refused = await end_jobs(healthy=2, refused_first=3)
            await receiver.wait_for(lambda: len(receiver.received) == 5, "first attempts")
            mid_retry = states_are(*[("pending", 1)] * 3, *[("succeeded", 1)] * 2)
            await wait_until(mid_retry, "refusals recorded")

            assert notifier.process is not None
            assert notifier.process.pid is not None
            os.killpg(notifier.process.pid, signal.SIGKILL)
            await notifier.stop()
            assert len(receiver.received) == 5, "a retry went out before the kill"
            more_healthy, more_refused = await end_jobs(healthy=1, refused_first=1)

            await notifier.start()
            every_one = states_are(*[("succeeded", 1)] * 3, *[("succeeded", 2)] * 4)
            await wait_until(every_one, "every delivery confirmed", within=60)
        finally:
            await notifier.stop()

    ids = {
        job_id: await event_id(user, job_id, "job.succeeded")
        for job_id in healthy + refused + more_healthy + more_refused
    }
    for job_id in healthy + more_healthy:
        assert [r.answered for r in receiver.of(ids[job_id])] == [200]
    for job_id in refused + more_refused:
        assert [r.answered for r in receiver.of(ids[job_id])] == [500, 200]
    assert len(receiver.received) == 3 + 2 * 4
    for received in receiver.received:
        assert received.verify(hook["secret"])["type"] == "job.succeeded"
