"""Idempotent submission: one `Idempotency-Key` gives one job, however often it is sent."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from uuid import uuid4

import httpx
import pytest
from nats.aio.client import Client
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.integration.gateway.conftest import ClientFactory
from tests.integration.gateway.jobs import job_body
from tests.integration.gateway.lifecycle import (
    StoredRows,
    events_of_user_after,
    last_stream_sequence,
    stored_rows,
)

pytestmark = pytest.mark.integration

ONE_JOB = StoredRows(jobs=1, outbox=1, quota_charges=1, idempotency_keys=1)


def keyed(key: str) -> dict[str, str]:
    return {"Idempotency-Key": key}


def user_id(client: httpx.Client) -> str:
    return str(client.get("/users/me").json()["id"])


async def test_the_same_key_and_body_return_the_same_job(
    client: httpx.Client, nc: Client, database: AsyncEngine
) -> None:
    before = await last_stream_sequence(nc)
    key = f"retry-{uuid4()}"
    first = client.post("/jobs", json=job_body(), headers=keyed(key))
    assert first.status_code == 201, first.text
    job_id = first.json()["id"]

    # A retry, and one leaving out the default branch: the same request either way.
    retried = client.post("/jobs", json=job_body(), headers=keyed(key))
    defaulted = job_body()
    del defaulted["git_base_branch"]
    again = client.post("/jobs", json=defaulted, headers=keyed(key))
    for replay in (retried, again):
        assert replay.status_code == 200, replay.text
        assert replay.json()["id"] == job_id
        assert replay.headers["location"] == f"/v1/jobs/{job_id}"
    assert retried.json() == first.json()

    assert [job["id"] for job in client.get("/jobs").json()["jobs"]] == [job_id]
    events = client.get(f"/jobs/{job_id}/events").json()["events"]
    assert [event["type"] for event in events] == ["job.submitted"]
    assert client.get("/billing/usage").json()["jobs_this_cycle"] == 1
    me = user_id(client)
    assert await stored_rows(database, me) == ONE_JOB
    assert await events_of_user_after(nc, before, me) == [f"jobs.{job_id}.submitted"]


async def test_the_same_key_with_another_body_is_a_conflict(
    client: httpx.Client, database: AsyncEngine
) -> None:
    key = f"retry-{uuid4()}"
    job_id = client.post("/jobs", json=job_body(), headers=keyed(key)).json()["id"]
    for changed in (
        job_body(git_base_branch="develop"),
        job_body(git_repo_url="https://example.com/acme/other.git"),
        job_body(spec_content="id: add-login\ngoal: Something else.\n"),
    ):
        conflict = client.post("/jobs", json=changed, headers=keyed(key))
        assert conflict.status_code == 409, conflict.text
        body = conflict.json()
        assert body["error"] == "idempotency_conflict"
        assert body["job_id"] == job_id
        assert "Idempotency-Key" in body["message"]
    assert [job["id"] for job in client.get("/jobs").json()["jobs"]] == [job_id]
    assert await stored_rows(database, user_id(client)) == ONE_JOB
    # The original request still replays.
    assert client.post("/jobs", json=job_body(), headers=keyed(key)).status_code == 200


async def test_users_have_their_own_keys(client_for: ClientFactory, database: AsyncEngine) -> None:
    key = "nightly-build"
    alice, bob = client_for("pro"), client_for("pro")
    created = [client.post("/jobs", json=job_body(), headers=keyed(key)) for client in (alice, bob)]
    assert [response.status_code for response in created] == [201, 201]
    alice_job, bob_job = (response.json()["id"] for response in created)
    assert alice_job != bob_job
    # Bob's key names his job, not Alice's, and the other way round.
    assert alice.post("/jobs", json=job_body(), headers=keyed(key)).json()["id"] == alice_job
    assert bob.post("/jobs", json=job_body(), headers=keyed(key)).json()["id"] == bob_job
    assert bob.get(f"/jobs/{alice_job}").status_code == 404
    for client in (alice, bob):
        assert await stored_rows(database, user_id(client)) == ONE_JOB


async def test_concurrent_requests_with_one_key_make_one_job(
    client_for: ClientFactory, nc: Client, database: AsyncEngine
) -> None:
    senders = 10
    email = f"concurrent-{uuid4().hex[:12]}@example.com"
    # A user the gateway has not seen yet: the requests also race to create the user.
    clients = [client_for("pro", email=email) for _ in range(senders)]
    before = await last_stream_sequence(nc)
    key = f"double-click-{uuid4()}"
    together = threading.Barrier(senders)

    def send(client: httpx.Client) -> httpx.Response:
        together.wait()
        return client.post("/jobs", json=job_body(), headers=keyed(key))

    with ThreadPoolExecutor(senders) as pool:
        responses = list(pool.map(send, clients))

    assert sorted(response.status_code for response in responses) == [200] * 9 + [201], [
        response.text for response in responses
    ]
    (job_id,) = {response.json()["id"] for response in responses}
    me = user_id(clients[0])
    assert [job["id"] for job in clients[0].get("/jobs").json()["jobs"]] == [job_id]
    assert clients[0].get("/billing/usage").json()["jobs_this_cycle"] == 1
    assert await stored_rows(database, me) == ONE_JOB
    assert await events_of_user_after(nc, before, me) == [f"jobs.{job_id}.submitted"]


async def test_without_a_key_each_request_is_a_new_job(client: httpx.Client) -> None:
    first, second = (client.post("/jobs", json=job_body()) for _ in range(2))
    assert (first.status_code, second.status_code) == (201, 201)
    assert first.json()["id"] != second.json()["id"]


async def test_a_refused_request_does_not_use_up_its_key(
    client: httpx.Client, database: AsyncEngine
) -> None:
    key = f"fix-and-retry-{uuid4()}"
    refused = client.post("/jobs", json=job_body(git_base_branch="a..b"), headers=keyed(key))
    assert refused.status_code == 422
    # The corrected request is a new one, not a conflict with the refused one.
    created = client.post("/jobs", json=job_body(), headers=keyed(key))
    assert created.status_code == 201, created.text
    assert await stored_rows(database, user_id(client)) == ONE_JOB
