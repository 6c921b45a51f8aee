"""Monthly quotas: included jobs per tier, overage, refunds of rejected jobs, one charge per job."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import httpx
import pytest
from nats.aio.client import Client
from sqlalchemy.ext.asyncio import AsyncEngine

from ckrv.events.catalog import RunnerBackend
from ckrv.events.state import (
    DispatchJob,
    FailJob,
    MarkLost,
    QueueJob,
    RejectJob,
    RetryJob,
    StartJob,
)
from ckrv.events.store import JobEventStore
from tests.integration.gateway.conftest import ClientFactory
from tests.integration.gateway.jobs import job_body
from tests.integration.gateway.lifecycle import (
    SERVICE,
    drive,
    events_of_user_after,
    last_stream_sequence,
    start,
    stored_rows,
    succeed,
    wait_for_job,
)

pytestmark = pytest.mark.integration

UPGRADE_URL = "https://ckrv.dev/pricing"


def submit_jobs(client: httpx.Client, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        response = client.post("/jobs", json=job_body())
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    return ids


def first_of_next_month(now: datetime) -> datetime:
    if now.month == 12:
        return datetime(now.year + 1, 1, 1, tzinfo=UTC)
    return datetime(now.year, now.month + 1, 1, tzinfo=UTC)


def usage(client: httpx.Client) -> dict[str, Any]:
    body: dict[str, Any] = client.get("/billing/usage").json()
    return body


def remaining(client: httpx.Client) -> int:
    return int(client.get("/users/me").json()["job_quota_remaining"])


def assert_over_quota(response: httpx.Response) -> None:
    assert response.status_code == 402, response.text
    body = response.json()
    assert body["error"] == "quota_exceeded"
    assert body["upgrade_url"] == UPGRADE_URL
    # The first day of next month, at midnight UTC.
    assert body["quota_resets_at"].endswith("+00:00")
    assert datetime.fromisoformat(body["quota_resets_at"]) == first_of_next_month(datetime.now(UTC))


async def reject(store: JobEventStore, client: httpx.Client, job_id: str) -> None:
    """Admission refuses the job, as the dispatcher would; returns once the API shows it."""
    command = RejectJob(actor=SERVICE, error_code="policy", error_message="Repository not allowed.")
    await drive(store, UUID(job_id), command)
    await wait_for_job(client, job_id, lambda job: job["status"] == "failed")


async def test_the_free_tier_stops_at_ten_jobs_a_month(
    client_for: ClientFactory, nc: Client, database: AsyncEngine
) -> None:
    client = client_for("free")
    submit_jobs(client, 10)
    assert remaining(client) == 0
    me = client.get("/users/me").json()
    assert datetime.fromisoformat(me["billing_cycle_end"]) == first_of_next_month(datetime.now(UTC))

    before = await last_stream_sequence(nc)
    assert_over_quota(client.post("/jobs", json=job_body()))
    assert_over_quota(client.post("/jobs", json=job_body(), headers={"Idempotency-Key": "k"}))
    assert len(client.get("/jobs", params={"limit": 100}).json()["jobs"]) == 10
    rows = await stored_rows(database, me["id"])
    assert (rows.jobs, rows.outbox, rows.quota_charges, rows.idempotency_keys) == (10, 10, 10, 0)
    assert await events_of_user_after(nc, before, me["id"]) == []
    assert usage(client) | {"billing_cycle_start": None, "billing_cycle_end": None} == {
        "billing_cycle_start": None,
        "billing_cycle_end": None,
        "subscription_tier": "free",
        "jobs_this_cycle": 10,
        "jobs_included": 10,
        "overage_jobs": 0,
        "overage_amount_cents": 0,
        "overage_amount": "0.00",
    }


async def test_the_pro_tier_bills_jobs_beyond_a_hundred(client_for: ClientFactory) -> None:
    client = client_for("pro")
    submit_jobs(client, 100)
    assert remaining(client) == 0
    assert (usage(client)["overage_jobs"], usage(client)["overage_amount"]) == (0, "0.00")

    submit_jobs(client, 1)
    billed = usage(client)
    assert billed["subscription_tier"] == "pro"
    assert billed["jobs_this_cycle"] == 101
    assert billed["jobs_included"] == 100
    assert billed["overage_jobs"] == 1
    assert billed["overage_amount_cents"] == 50
    assert billed["overage_amount"] == "0.50"
    assert remaining(client) == 0
    now = datetime.now(UTC)
    assert datetime.fromisoformat(billed["billing_cycle_start"]) == datetime(
        now.year, now.month, 1, tzinfo=UTC
    )
    assert datetime.fromisoformat(billed["billing_cycle_end"]) == first_of_next_month(now)


async def test_a_job_rejected_before_it_starts_is_refunded(
    client_for: ClientFactory, store: JobEventStore
) -> None:
    client = client_for("free")
    jobs = submit_jobs(client, 10)
    assert_over_quota(client.post("/jobs", json=job_body()))

    await reject(store, client, jobs[3])
    assert usage(client)["jobs_this_cycle"] == 9
    assert remaining(client) == 1
    rejected = client.get(f"/jobs/{jobs[3]}").json()
    assert (rejected["status"], rejected["error_message"]) == ("failed", "Repository not allowed.")

    # The place it gave back can be used once, and the rejected job is refunded only once.
    submit_jobs(client, 1)
    assert_over_quota(client.post("/jobs", json=job_body()))
    await drive(store, UUID(jobs[3]), RejectJob(actor=SERVICE, error_code="x", error_message="y"))
    assert usage(client)["jobs_this_cycle"] == 10


async def test_a_rejected_overage_job_is_not_billed(
    client_for: ClientFactory, store: JobEventStore
) -> None:
    client = client_for("pro")
    jobs = submit_jobs(client, 101)
    assert usage(client)["overage_amount_cents"] == 50
    await reject(store, client, jobs[-1])
    billed = usage(client)
    assert (billed["jobs_this_cycle"], billed["overage_jobs"]) == (100, 0)
    assert (billed["overage_amount_cents"], billed["overage_amount"]) == (0, "0.00")


async def test_a_job_is_charged_once_however_often_it_is_retried(
    client_for: ClientFactory, store: JobEventStore
) -> None:
    client = client_for("pro")
    (job_id,) = submit_jobs(client, 1)
    job = UUID(job_id)
    await start(store, job)
    # The workload is lost twice and the job runs again each time, then succeeds.
    for attempt in (1, 2):
        await drive(
            store,
            job,
            MarkLost(actor=SERVICE, attempt=attempt, reason="node gone"),
            RetryJob(actor=SERVICE, attempt=attempt),
            QueueJob(actor=SERVICE, reason="retry"),
            DispatchJob(actor=SERVICE, runner=RunnerBackend.LOCAL),
            StartJob(actor=SERVICE, attempt=attempt + 1),
        )

        def runs_again(job: dict[str, Any], attempt: int = attempt + 1) -> bool:
            return bool(job["status"] == "running" and job["attempt"] == attempt)

        await wait_for_job(client, job_id, runs_again)
        assert usage(client)["jobs_this_cycle"] == 1
    await succeed(store, job, attempt=3)
    await wait_for_job(client, job_id, lambda shown: shown["status"] == "succeeded")
    assert usage(client)["jobs_this_cycle"] == 1
    assert remaining(client) == 99


async def test_a_job_that_failed_while_running_stays_charged(
    client_for: ClientFactory, store: JobEventStore
) -> None:
    client = client_for("pro")
    (job_id,) = submit_jobs(client, 1)
    await start(store, UUID(job_id))
    failure = FailJob(actor=SERVICE, attempt=1, error_code="agent_failed", error_message="No.")
    await drive(store, UUID(job_id), failure)
    await wait_for_job(client, job_id, lambda job: job["status"] == "failed")
    assert usage(client)["jobs_this_cycle"] == 1


async def test_an_included_job_rejected_after_overage_began_takes_the_overage_back(
    client_for: ClientFactory, store: JobEventStore
) -> None:
    client = client_for("pro")
    jobs = submit_jobs(client, 101)
    # One of the hundred included jobs is refused: the hundred-and-first now fits the plan.
    await reject(store, client, jobs[0])
    billed = usage(client)
    assert (billed["jobs_this_cycle"], billed["overage_jobs"]) == (100, 0)
    assert (billed["overage_amount_cents"], billed["overage_amount"]) == (0, "0.00")
    # The next job is the first extra one again.
    submit_jobs(client, 1)
    billed = usage(client)
    assert (billed["jobs_this_cycle"], billed["overage_jobs"], billed["overage_amount"]) == (
        101,
        1,
        "0.50",
    )
