"""Listing jobs page by page and by status; cancel conflicts; elapsed time and estimates."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import httpx
import pytest

from ckrv.events.state import ConfirmCancel, FailJob, TimeOutJob
from ckrv.events.store import JobEventStore
from tests.integration.gateway.conftest import ClientFactory
from tests.integration.gateway.jobs import job_body
from tests.integration.gateway.lifecycle import (
    SERVICE,
    drive,
    has_status,
    start,
    succeed,
    wait_for_job,
)

pytestmark = pytest.mark.integration

REPOSITORY = "https://example.com/acme/app.git"
OTHER_REPOSITORY = "https://example.com/acme/other.git"


def submit(client: httpx.Client, **overrides: Any) -> str:
    response = client.post("/jobs", json=job_body(**overrides))
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def all_pages(client: httpx.Client, **params: Any) -> list[list[str]]:
    """Every page of `GET /jobs` with `params`, following `next_cursor`; the ids on each."""
    pages: list[list[str]] = []
    cursor = None
    while True:
        query = params | ({"cursor": cursor} if cursor else {})
        response = client.get("/jobs", params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append([job["id"] for job in body["jobs"]])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 50, "the cursor never ends"


async def cancel(client: httpx.Client, store: JobEventStore, job_id: str) -> None:
    """The owner cancels; the dispatcher confirms, as it would before deleting the workload."""
    assert client.post(f"/jobs/{job_id}/cancel").status_code == 202
    await drive(store, UUID(job_id), ConfirmCancel(actor=SERVICE))
    await wait_for_job(client, job_id, lambda job: job["status"] == "cancelled")


def ago(seconds: float) -> datetime:
    return datetime.now(UTC) - timedelta(seconds=seconds)


def close_to(value: str | None, expected: datetime, tolerance: float = 5.0) -> bool:
    assert value is not None
    return abs((datetime.fromisoformat(value) - expected).total_seconds()) <= tolerance


async def test_pages_give_every_job_once_newest_first(client_for: ClientFactory) -> None:
    client = client_for("pro")
    submitted = [submit(client) for _ in range(25)]
    newest_first = submitted[::-1]

    pages = all_pages(client, limit=10)
    assert [len(page) for page in pages] == [10, 10, 5]
    assert [job for page in pages for job in page] == newest_first
    assert all_pages(client, limit=25) == [newest_first]
    assert all_pages(client, limit=100) == [newest_first]
    # The default page is 20.
    assert len(client.get("/jobs").json()["jobs"]) == 20

    # A job submitted while someone pages does not shift the pages that follow.
    first = client.get("/jobs", params={"limit": 10}).json()
    late = submit(client)
    rest = all_pages(client, limit=10, cursor=first["next_cursor"])
    assert [job["id"] for job in first["jobs"]] + [j for page in rest for j in page] == (
        newest_first
    )
    assert all_pages(client, limit=10)[0][0] == late


async def test_the_status_filter_pages_too(client_for: ClientFactory, store: JobEventStore) -> None:
    client = client_for("pro")
    jobs = [submit(client) for _ in range(12)]
    cancelled, succeeded, running = jobs[1:4], jobs[5:7], jobs[8]
    for job_id in cancelled:
        await cancel(client, store, job_id)
    for job_id in succeeded:
        await start(store, UUID(job_id))
        await succeed(store, UUID(job_id))
        await wait_for_job(client, job_id, lambda job: job["status"] == "succeeded")
    await start(store, UUID(running))
    await wait_for_job(client, running, lambda job: job["status"] == "running")
    pending = [job for job in jobs if job not in {*cancelled, *succeeded, running}]

    def listed(status: str, limit: int) -> list[str]:
        return [job for page in all_pages(client, status=status, limit=limit) for job in page]

    assert listed("cancelled", 2) == cancelled[::-1]
    assert listed("succeeded", 1) == succeeded[::-1]
    assert listed("running", 5) == [running]
    assert listed("pending", 2) == pending[::-1]
    assert listed("failed", 10) == []
    assert listed("timeout", 10) == []
    statuses = {
        job["status"] for job in client.get("/jobs", params={"status": "cancelled"}).json()["jobs"]
    }
    assert statuses == {"cancelled"}


async def test_a_limit_over_a_hundred_is_refused(client_for: ClientFactory) -> None:
    response = client_for("pro").get("/jobs", params={"limit": 101})
    assert response.status_code == 422
    assert response.json()["error"] == "validation_error"


async def test_cancelling_a_finished_job_answers_409_with_its_status(
    client_for: ClientFactory, store: JobEventStore
) -> None:
    client = client_for("pro")
    done, failed, timed_out, cancelled = (submit(client) for _ in range(4))
    for job_id in (done, failed, timed_out):
        await start(store, UUID(job_id))
    await succeed(store, UUID(done))
    failure = FailJob(actor=SERVICE, attempt=1, error_code="agent_failed", error_message="No.")
    await drive(store, UUID(failed), failure)
    await drive(store, UUID(timed_out), TimeOutJob(actor=SERVICE, attempt=1))
    await cancel(client, store, cancelled)

    for job_id, status in (
        (done, "succeeded"),
        (failed, "failed"),
        (timed_out, "timeout"),
        (cancelled, "cancelled"),
    ):
        await wait_for_job(client, job_id, has_status(status))
        history = client.get(f"/jobs/{job_id}/events").json()["events"]
        response = client.post(f"/jobs/{job_id}/cancel")
        assert response.status_code == 409, response.text
        body = response.json()
        assert (body["error"], body["status"]) == ("conflict", status)
        assert status in body["message"]
        assert client.get(f"/jobs/{job_id}/events").json()["events"] == history


async def test_the_estimate_comes_from_the_owners_last_run_on_the_same_repository(
    client_for: ClientFactory, store: JobEventStore
) -> None:
    client = client_for("pro")
    assert client.get(f"/jobs/{submit(client)}").json()["estimated_completion_at"] is None

    # A run on the repository that took 120 s.
    earlier = submit(client, git_repo_url=REPOSITORY)
    began = ago(200)
    await start(store, UUID(earlier), at=began)
    await succeed(store, UUID(earlier), at=began + timedelta(seconds=120))
    finished = await wait_for_job(client, earlier, lambda job: job["status"] == "succeeded")
    assert finished["elapsed_seconds"] == pytest.approx(120, abs=0.01)
    assert finished["estimated_completion_at"] is None

    queued = client.post("/jobs", json=job_body(git_repo_url=REPOSITORY)).json()
    assert close_to(queued["estimated_completion_at"], datetime.now(UTC) + timedelta(seconds=120))
    again = client.get(f"/jobs/{queued['id']}").json()
    assert close_to(again["estimated_completion_at"], datetime.now(UTC) + timedelta(seconds=120))
    listed = {job["id"]: job for job in client.get("/jobs").json()["jobs"]}
    assert listed[queued["id"]]["estimated_completion_at"] is not None

    # A running job is estimated from when it started.
    started = ago(30)
    await start(store, UUID(queued["id"]), at=started)
    running = await wait_for_job(client, queued["id"], lambda job: job["status"] == "running")
    assert close_to(running["estimated_completion_at"], started + timedelta(seconds=120), 0.01)

    # Other repositories, and other users on the same one, have no history to go by.
    elsewhere = client.post("/jobs", json=job_body(git_repo_url=OTHER_REPOSITORY)).json()
    assert elsewhere["estimated_completion_at"] is None
    stranger = client_for("pro").post("/jobs", json=job_body(git_repo_url=REPOSITORY)).json()
    assert stranger["estimated_completion_at"] is None


async def test_elapsed_time_grows_while_a_job_runs(
    client_for: ClientFactory, store: JobEventStore
) -> None:
    client = client_for("pro")
    job_id = submit(client)
    assert client.get(f"/jobs/{job_id}").json()["elapsed_seconds"] is None
    began = ago(50)
    await start(store, UUID(job_id), at=began)
    first = await wait_for_job(client, job_id, lambda job: job["status"] == "running")
    assert first["elapsed_seconds"] >= 50
    await asyncio.sleep(0.2)
    second = client.get(f"/jobs/{job_id}").json()
    assert second["elapsed_seconds"] >= first["elapsed_seconds"] + 0.2

    await succeed(store, UUID(job_id), at=began + timedelta(seconds=40))
    done = await wait_for_job(client, job_id, lambda job: job["status"] == "succeeded")
    assert done["elapsed_seconds"] == pytest.approx(40, abs=0.01)
    await asyncio.sleep(0.1)
    assert client.get(f"/jobs/{job_id}").json()["elapsed_seconds"] == done["elapsed_seconds"]
