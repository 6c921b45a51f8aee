"""Submitting, reading, listing and cancelling jobs through the gateway process."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.integration.gateway.conftest import ClientFactory
from tests.integration.gateway.jobs import job_body
from tests.running_gateway import RunningGateway

pytestmark = pytest.mark.integration


def test_a_submitted_job_is_readable_at_once_with_its_event(client: httpx.Client) -> None:
    created = client.post("/jobs", json=job_body())
    assert created.status_code == 201, created.text
    job = created.json()
    assert job["status"] == "pending"
    assert job["spec_id"] == "add-login"
    assert job["git_repo_url"] == "https://example.com/acme/app.git"
    assert job["git_base_branch"] == "main"
    assert job["feature_branch_name"] == f"ckrv/{uuid.UUID(job['id']).hex[:8]}"
    assert job["attempt"] == 0
    assert job["started_at"] is None
    assert job["result_status"] is None
    assert job["cancel_requested"] is False
    assert created.headers["location"] == f"/v1/jobs/{job['id']}"

    fetched = client.get(f"/jobs/{job['id']}")
    assert fetched.status_code == 200
    assert fetched.json() == job

    events = client.get(f"/jobs/{job['id']}/events").json()["events"]
    assert [event["type"] for event in events] == ["job.submitted"]
    assert events[0]["data"]["spec_id"] == "add-login"
    assert "spec_content" not in events[0]["data"]

    listed = client.get("/jobs").json()
    assert [listed_job["id"] for listed_job in listed["jobs"]] == [job["id"]]
    assert listed["next_cursor"] is None


def test_another_users_job_is_not_found(client_for: ClientFactory) -> None:
    owner, stranger = client_for(), client_for()
    job_id = owner.post("/jobs", json=job_body()).json()["id"]
    for response in (
        stranger.get(f"/jobs/{job_id}"),
        stranger.get(f"/jobs/{job_id}/events"),
        stranger.post(f"/jobs/{job_id}/cancel"),
    ):
        assert response.status_code == 404
        assert response.json()["error"] == "not_found"
    assert stranger.get("/jobs").json()["jobs"] == []


def test_cancel_is_accepted_and_shown(client: httpx.Client) -> None:
    job_id = client.post("/jobs", json=job_body()).json()["id"]
    cancelled = client.post(f"/jobs/{job_id}/cancel")
    assert cancelled.status_code == 202
    assert cancelled.json()["cancel_requested"] is True
    assert client.get(f"/jobs/{job_id}").json()["cancel_requested"] is True
    # Asking again changes nothing.
    assert client.post(f"/jobs/{job_id}/cancel").status_code == 202
    types = [event["type"] for event in client.get(f"/jobs/{job_id}/events").json()["events"]]
    assert types == ["job.submitted", "job.cancel-requested"]


def test_requests_without_a_valid_token_are_unauthorized(gateway: RunningGateway) -> None:
    for headers in ({}, {"Authorization": "Bearer nonsense"}, {"Authorization": "Basic x"}):
        response = httpx.get(f"{gateway.api_url}/jobs", headers=headers)
        assert response.status_code == 401
        assert response.json()["error"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"


def test_users_me_shows_tier_and_remaining_quota(client_for: ClientFactory) -> None:
    client = client_for("pro")
    client.post("/jobs", json=job_body())
    me = client.get("/users/me").json()
    assert me["subscription_tier"] == "pro"
    assert me["job_quota_remaining"] == 99
    assert me["email"].endswith("@example.com")
    assert me["billing_cycle_end"]
