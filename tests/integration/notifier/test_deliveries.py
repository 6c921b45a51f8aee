"""The notifier against real endpoints: signed deliveries, retries, disabling, isolation.

Every delivery is checked on the receiving side with the Standard Webhooks
reference library (`Received.verify`), as receivers in the wild check them.
Waits are for an outcome (with a generous bound), never for an amount of time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from uuid import UUID, uuid4

import httpx
import pytest
from standardwebhooks.webhooks import WebhookVerificationError

from ckrv.events.consumer import Delivery
from ckrv.services.notifier.service import Notifier
from tests.integration.notifier.conftest import (
    FAST,
    FAST_RETRIES,
    WebhookStack,
    add_webhook,
    deliveries,
    event_id,
    finish,
    running_notifier,
    wait_until,
    webhook,
)
from tests.webhook_receiver import Received, WebhookReceiver, always, failing_first

pytestmark = pytest.mark.integration


def disabled(user: httpx.AsyncClient, webhook_id: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return not (await webhook(user, webhook_id))["enabled"]

    return check


def failed(user: httpx.AsyncClient, webhook_id: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return [d["status"] for d in await deliveries(user, webhook_id)] == ["failed"]

    return check


async def test_a_finished_job_arrives_signed_as_the_api_shows_it(
    webhook_stack: WebhookStack, user: httpx.AsyncClient
) -> None:
    async with WebhookReceiver() as receiver, running_notifier(webhook_stack, **FAST):
        hook = await add_webhook(user, receiver.url)
        job_id = await finish(webhook_stack, user)
        await receiver.wait_for(lambda: len(receiver.received) == 1, "the job's end delivered")
        job = (await user.get(f"/jobs/{job_id}")).json()

    (received,) = receiver.received
    payload = received.verify(hook["secret"])
    assert payload == {
        "type": "job.succeeded",
        "timestamp": payload["timestamp"],
        "data": job,
    }
    assert job["status"] == "succeeded"
    assert received.webhook_id == await event_id(user, job_id, "job.succeeded")
    assert datetime.fromisoformat(payload["timestamp"]) == datetime.fromisoformat(
        job["completed_at"]
    )
    assert received.headers["content-type"] == "application/json"
    delivered_at = int(received.headers["webhook-timestamp"])
    assert abs(delivered_at - datetime.now(UTC).timestamp()) < 300
    (delivery,) = await deliveries(user, hook["id"])
    assert delivery["event_id"] == received.webhook_id
    assert (delivery["event_type"], delivery["status"], delivery["attempts"]) == (
        "job.succeeded",
        "succeeded",
        1,
    )
    assert (delivery["status_code"], delivery["error"], delivery["next_attempt_at"]) == (
        200,
        None,
        None,
    )
    assert delivery["latency_ms"] > 0
    assert delivery["delivered_at"] is not None


async def test_an_endpoint_hears_of_the_event_types_it_named(
    webhook_stack: WebhookStack, user: httpx.AsyncClient
) -> None:
    async with WebhookReceiver() as receiver, running_notifier(webhook_stack, **FAST):
        hook = await add_webhook(user, receiver.url, event_types=["job.queued", "job.started"])
        job_id = await finish(webhook_stack, user)
        await receiver.wait_for(lambda: len(receiver.received) == 2, "two events delivered")
        # The job's end was on the stream before its start was delivered; it is not coming.
        pong = (await user.post(f"/webhooks/{hook['id']}/test")).json()
        await receiver.wait_for(lambda: len(receiver.received) == 3, "the ping delivered")

    types = [received.verify(hook["secret"])["type"] for received in receiver.received]
    assert sorted(types[:2]) == ["job.queued", "job.started"]
    assert types[2] == "webhook.ping"
    assert receiver.received[2].webhook_id == pong["event_id"]
    started = next(r for r in receiver.received if r.payload()["type"] == "job.started")
    assert started.payload()["data"]["status"] == "running"
    assert started.webhook_id == await event_id(user, job_id, "job.started")


async def test_a_failed_attempt_is_retried_with_the_same_id_and_a_fresh_signature(
    webhook_stack: WebhookStack, user: httpx.AsyncClient
) -> None:
    async with (
        WebhookReceiver(failing_first(2)) as receiver,
        running_notifier(webhook_stack, **FAST),
    ):
        hook = await add_webhook(user, receiver.url)
        await finish(webhook_stack, user)
        await receiver.wait_for(lambda: len(receiver.confirmed()) == 1, "delivered at last")

    assert [received.answered for received in receiver.received] == [500, 500, 200]
    assert len({received.webhook_id for received in receiver.received}) == 1
    for received in receiver.received:
        assert received.verify(hook["secret"])["type"] == "job.succeeded"
    assert len({received.body for received in receiver.received}) == 1
    (delivery,) = await deliveries(user, hook["id"])
    assert (delivery["status"], delivery["attempts"], delivery["status_code"]) == (
        "succeeded",
        3,
        200,
    )
    assert (await webhook(user, hook["id"]))["consecutive_failures"] == 0


async def test_a_delivery_fails_once_its_retries_are_used_up(
    webhook_stack: WebhookStack, user: httpx.AsyncClient
) -> None:
    async with WebhookReceiver(always(500)) as receiver, running_notifier(webhook_stack, **FAST):
        hook = await add_webhook(user, receiver.url)
        await finish(webhook_stack, user)
        await wait_until(failed(user, hook["id"]), "the delivery failed")

    # The first attempt and one retry per entry of the schedule.
    assert len(receiver.received) == 1 + len(FAST_RETRIES)
    (delivery,) = await deliveries(user, hook["id"])
    assert (delivery["attempts"], delivery["status_code"], delivery["next_attempt_at"]) == (
        4,
        500,
        None,
    )
    assert delivery["error"] == "HTTP 500 Internal Server Error: receiver says no"
    endpoint = await webhook(user, hook["id"])
    assert (endpoint["enabled"], endpoint["consecutive_failures"]) == (True, 4)


async def test_gone_disables_the_endpoint_until_its_owner_enables_it(
    webhook_stack: WebhookStack, user: httpx.AsyncClient
) -> None:
    async with (
        WebhookReceiver(always(410)) as receiver,
        # Another endpoint of the user's hears of every job's end: once it has, the notifier
        # has decided about the disabled one too.
        WebhookReceiver() as witness,
        running_notifier(webhook_stack, **FAST),
    ):
        hook = await add_webhook(user, receiver.url)
        await add_webhook(user, witness.url)
        await finish(webhook_stack, user)
        await wait_until(disabled(user, hook["id"]), "disabled")
        assert (await webhook(user, hook["id"]))["disabled_reason"] == "gone"
        (gone,) = await deliveries(user, hook["id"])
        assert (gone["status"], gone["attempts"], gone["status_code"]) == ("failed", 1, 410)

        # Disabled, it is not told of the next job's end at all.
        await finish(webhook_stack, user)
        await witness.wait_for(lambda: len(witness.received) == 2, "the second job's end")
        assert len(await deliveries(user, hook["id"])) == 1

        receiver.answer = always(200)
        enabled = (await user.patch(f"/webhooks/{hook['id']}", json={"enabled": True})).json()
        assert (enabled["enabled"], enabled["disabled_reason"]) == (True, None)
        await finish(webhook_stack, user)
        await receiver.wait_for(lambda: len(receiver.received) == 2, "delivered once enabled")

    assert [received.answered for received in receiver.received] == [410, 200]
    assert receiver.received[1].webhook_id == witness.received[2].webhook_id


async def test_twenty_failures_in_a_row_disable_the_endpoint(
    webhook_stack: WebhookStack, user: httpx.AsyncClient
) -> None:
    settings = FAST | {"retry_delays_seconds": (0.0,) * 30}
    async with (
        WebhookReceiver(always(503)) as receiver,
        running_notifier(webhook_stack, **settings),
    ):
        hook = await add_webhook(user, receiver.url)
        await finish(webhook_stack, user)
        await wait_until(disabled(user, hook["id"]), "disabled")

        endpoint = await webhook(user, hook["id"])
        assert (endpoint["disabled_reason"], endpoint["consecutive_failures"]) == ("failing", 20)
        assert len(receiver.received) == 20
        (paused,) = await deliveries(user, hook["id"])
        assert (paused["status"], paused["attempts"]) == ("pending", 20)

        # Re-enabled, the delivery carries on where it stopped.
        receiver.answer = always(204)
        await user.patch(f"/webhooks/{hook['id']}", json={"enabled": True})
        await receiver.wait_for(lambda: len(receiver.confirmed()) == 1, "delivered at last")

    assert len(receiver.received) == 21
    (delivered,) = await deliveries(user, hook["id"])
    assert (delivered["status"], delivered["attempts"], delivered["status_code"]) == (
        "succeeded",
        21,
        204,
    )
    assert (await webhook(user, hook["id"]))["consecutive_failures"] == 0


async def test_a_slow_endpoint_does_not_hold_up_a_healthy_one(
    webhook_stack: WebhookStack, user: httpx.AsyncClient
) -> None:
    released = asyncio.Event()

    async def hang(_: int, __: Received) -> int:
        await released.wait()
        return 200

    jobs = 6
    async with (
        WebhookReceiver(hang) as slow,
        WebhookReceiver() as healthy,
        # Attempts that time out would free their places anyway: these do not, in the test.
        running_notifier(
            webhook_stack,
            **FAST,
            attempt_timeout_seconds=120,
            endpoint_concurrency=2,
            max_in_flight=4,
        ),
    ):
        await add_webhook(user, slow.url)
        await add_webhook(user, healthy.url)
        for _ in range(jobs):
            await finish(webhook_stack, user)

        await healthy.wait_for(lambda: len(healthy.received) == jobs, "the healthy one served")
        assert slow.received == []
        await slow.wait_for(lambda: slow.in_flight == 2, "the slow one's two places taken")
        released.set()
        await slow.wait_for(lambda: len(slow.received) == jobs, "the slow one served at last")

    assert slow.most_in_flight == 2
    assert {r.webhook_id for r in slow.received} == {r.webhook_id for r in healthy.received}


async def test_each_owner_hears_of_their_own_jobs_only(
    webhook_stack: WebhookStack, user: httpx.AsyncClient
) -> None:
    async with webhook_stack.client(f"other-{uuid4().hex[:12]}@example.com") as other:
        async with (
            WebhookReceiver() as mine,
            WebhookReceiver() as theirs,
            running_notifier(webhook_stack, **FAST),
        ):
            await add_webhook(user, mine.url)
            their_hook = await add_webhook(other, theirs.url)
            first = await finish(webhook_stack, user)
            second = await finish(webhook_stack, other)
            await theirs.wait_for(lambda: len(theirs.received) == 1, "their job's end")
            await mine.wait_for(lambda: len(mine.received) == 1, "my job's end")

        assert mine.received[0].payload()["data"]["id"] == str(first)
        assert theirs.received[0].verify(their_hook["secret"])["data"]["id"] == str(second)
        assert len(await deliveries(other, their_hook["id"])) == 1


async def test_a_ping_and_a_redelivery_arrive_signed(
    webhook_stack: WebhookStack, user: httpx.AsyncClient
) -> None:
    async with WebhookReceiver() as receiver, running_notifier(webhook_stack, **FAST):
        hook = await add_webhook(user, receiver.url)
        ping = (await user.post(f"/webhooks/{hook['id']}/test")).json()
        await receiver.wait_for(lambda: len(receiver.received) == 1, "the ping")
        again = await user.post(f"/webhooks/{hook['id']}/deliveries/{ping['id']}/redeliver")
        assert again.status_code == 202
        await receiver.wait_for(lambda: len(receiver.received) == 2, "the ping again")

    first, second = receiver.received
    assert first.verify(hook["secret"]) == second.verify(hook["secret"])
    assert first.payload() == {
        "type": "webhook.ping",
        "timestamp": first.payload()["timestamp"],
        "data": {"webhook_id": hook["id"]},
    }
    assert first.webhook_id == second.webhook_id == ping["event_id"]
    (delivery,) = await deliveries(user, hook["id"])
    assert (delivery["status"], delivery["attempts"]) == ("succeeded", 2)


async def test_a_rotated_secret_signs_with_the_previous_one_until_its_grace_ends(
    webhook_stack: WebhookStack, user: httpx.AsyncClient
) -> None:
    async with WebhookReceiver() as receiver, running_notifier(webhook_stack, **FAST):
        hook = await add_webhook(user, receiver.url)
        rotated = (await user.post(f"/webhooks/{hook['id']}/rotate-secret")).json()
        await user.post(f"/webhooks/{hook['id']}/test")
        await receiver.wait_for(lambda: len(receiver.received) == 1, "a ping in the grace")
        valid_until = datetime.fromisoformat(rotated["previous_secret_valid_until"])
        await asyncio.sleep((valid_until - datetime.now(UTC)).total_seconds() + 0.1)
        await user.post(f"/webhooks/{hook['id']}/test")
        await receiver.wait_for(lambda: len(receiver.received) == 2, "a ping after it")

    during, after = receiver.received
    assert len(during.headers["webhook-signature"].split(" ")) == 2
    assert during.verify(rotated["secret"])["type"] == "webhook.ping"
    assert during.verify(hook["secret"])["type"] == "webhook.ping"
    assert after.verify(rotated["secret"])["type"] == "webhook.ping"
    with pytest.raises(WebhookVerificationError):
        after.verify(hook["secret"])


async def test_an_event_handled_again_records_nothing_more(
    webhook_stack: WebhookStack, user: httpx.AsyncClient
) -> None:
    async with (
        WebhookReceiver() as receiver,
        running_notifier(webhook_stack, **FAST) as notifier,
    ):
        hook = await add_webhook(user, receiver.url)
        job_id = await finish(webhook_stack, user)
        await receiver.wait_for(lambda: len(receiver.received) == 1, "the job's end")
        # Made after the event: an endpoint hears of what happens from then on.
        later = await add_webhook(user, receiver.url)

        await handle_again(notifier, webhook_stack, job_id, "job.succeeded")
        await handle_again(notifier, webhook_stack, job_id, "job.succeeded")
        await user.post(f"/webhooks/{hook['id']}/test")
        await receiver.wait_for(lambda: len(receiver.received) == 2, "a ping after them")

    assert len(await deliveries(user, hook["id"])) == 2
    assert await deliveries(user, later["id"]) == []
    assert [received.payload()["type"] for received in receiver.received] == [
        "job.succeeded",
        "webhook.ping",
    ]


async def handle_again(
    notifier: Notifier, stack: WebhookStack, job_id: UUID, event_type: str
) -> None:
    """Hand the notifier an event it handled already, as JetStream redelivers one."""
    (stored,) = [s for s in await stack.store.read(job_id) if s.event.type == event_type]
    await notifier.handle(
        Delivery(stored.event, stored.event.subject, stored.sequence, num_delivered=2)
    )
