"""The HTTP client against a real loopback server: requests sent, answers and errors mapped."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from ckrv.cli.client import CloudClient
from ckrv.cli.config import Settings
from ckrv.cli.errors import EXIT_SYSTEM_ERROR, EXIT_USER_ERROR, CloudError
from tests.unit.cli.bodies import JOB_ID, SPEC, TOKEN, error_body, job_body
from tests.unit.cli.contract_server import ContractServer, Reply


@pytest.fixture
def log() -> list[str]:
    return []


@pytest.fixture
def client(api: ContractServer, log: list[str]) -> Iterator[CloudClient]:
    with CloudClient(Settings(api.api_url, timeout=5), TOKEN, log=log.append) as client:
        yield client


def submit(client: CloudClient, key: str = "key-1") -> Any:
    return client.create_job(
        spec_content=SPEC,
        git_repo_url="https://github.com/acme/app.git",
        git_base_branch="main",
        git_credential_name=None,
        idempotency_key=key,
    )


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_a_submission_sends_the_contract_body_token_and_key(
    api: ContractServer, client: CloudClient
) -> None:
    api.reply("POST", "/jobs", Reply(201, job_body()))
    job = submit(client, "key-123")
    assert job.id == JOB_ID
    assert job.body == job_body()
    (request,) = api.requests_to("POST", "/jobs")
    assert request.body == {
        "spec_content": SPEC,
        "git_repo_url": "https://github.com/acme/app.git",
        "git_base_branch": "main",
        "git_credential_name": None,
    }
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["idempotency-key"] == "key-123"
    assert request.headers["user-agent"].startswith("ckrv/")


def test_a_dropped_submission_is_retried_once_with_the_same_key(
    api: ContractServer, client: CloudClient, log: list[str]
) -> None:
    api.reply("POST", "/jobs", Reply(drop=True), Reply(200, job_body()))
    assert submit(client, "same-key").id == JOB_ID
    keys = [r.headers["idempotency-key"] for r in api.requests_to("POST", "/jobs")]
    assert keys == ["same-key", "same-key"]
    assert "connection lost" in log[0]


def test_a_submission_dropped_twice_is_reported_unreachable(
    api: ContractServer, client: CloudClient
) -> None:
    api.reply("POST", "/jobs", Reply(drop=True))
    with pytest.raises(CloudError) as raised:
        submit(client)
    assert raised.value.code == "unreachable"
    assert len(api.requests_to("POST", "/jobs")) == 2


def test_a_dropped_cancel_is_not_resent(api: ContractServer, client: CloudClient) -> None:
    api.reply("POST", f"/jobs/{JOB_ID}/cancel", Reply(drop=True))
    with pytest.raises(CloudError) as raised:
        client.cancel_job(JOB_ID)
    assert raised.value.code == "unreachable"
    assert raised.value.exit_code == EXIT_SYSTEM_ERROR
    assert len(api.requests_to("POST", f"/jobs/{JOB_ID}/cancel")) == 1


def test_listing_sends_the_filters(api: ContractServer, client: CloudClient) -> None:
    api.reply("GET", "/jobs", Reply(200, {"jobs": [job_body()], "next_cursor": "c2"}))
    page = client.list_jobs(status="running", limit=5, cursor="c1")
    assert [job.id for job in page.jobs] == [JOB_ID]
    assert page.next_cursor == "c2"
    assert page.jobs[0].body == job_body()
    (request,) = api.requests_to("GET", "/jobs")
    assert request.query == {"status": ["running"], "limit": ["5"], "cursor": ["c1"]}


def test_users_me(api: ContractServer, client: CloudClient) -> None:
    me = {
        "id": str(uuid.uuid4()),
        "email": "ada@example.com",
        "name": "Ada",
        "subscription_tier": "free",
        "job_quota_remaining": 7,
        "billing_cycle_end": "2025-04-01T00:00:00Z",
    }
    api.reply("GET", "/users/me", Reply(200, me))
    user = client.me()
    assert (user.email, user.subscription_tier, user.job_quota_remaining) == (
        "ada@example.com",
        "free",
        7,
    )


def test_fields_and_values_a_newer_service_adds_are_kept(
    api: ContractServer, client: CloudClient
) -> None:
    newer = job_body(status="paused", phase="reviewing", reviewer="bot")
    api.reply("GET", f"/jobs/{JOB_ID}", Reply(200, newer))
    job = client.get_job(JOB_ID)
    assert (job.status, job.phase) == ("paused", "reviewing")
    assert job.body["reviewer"] == "bot"


@pytest.mark.parametrize(
    ("status", "body", "exit_code"),
    [
        (
            422,
            error_body(
                "validation_error",
                "git_repo_url: invalid",
                details=[{"field": "git_repo_url", "message": "invalid"}],
            ),
            EXIT_USER_ERROR,
        ),
        (404, error_body("not_found", f"job {JOB_ID} not found"), EXIT_USER_ERROR),
        (
            402,
            error_body(
                "quota_exceeded",
                "the free tier includes 10 jobs a month, all used",
                quota_resets_at="2025-04-01T00:00:00+00:00",
                upgrade_url="https://ckrv.dev/upgrade",
            ),
            EXIT_USER_ERROR,
        ),
        (429, error_body("concurrency_limited", "10 jobs unfinished", limit=10), EXIT_USER_ERROR),
        (409, error_body("idempotency_conflict", "key reused", job_id=JOB_ID), EXIT_USER_ERROR),
        (
            409,
            error_body("conflict", "job already ended: failed", status="failed"),
            EXIT_USER_ERROR,
        ),
        (401, error_body("unauthorized", "invalid token"), EXIT_USER_ERROR),
        (503, error_body("unavailable", "the event stream is unreachable"), EXIT_SYSTEM_ERROR),
        (500, error_body("internal_error", "the service failed"), EXIT_SYSTEM_ERROR),
    ],
)
def test_error_bodies_become_cloud_errors(
    api: ContractServer, client: CloudClient, status: int, body: dict[str, Any], exit_code: int
) -> None:
    api.reply("POST", "/jobs", Reply(status, body))
    with pytest.raises(CloudError) as raised:
        submit(client)
    error = raised.value
    extra = {key: value for key, value in body.items() if key not in ("error", "message")}
    assert (error.code, error.message, error.extra, error.http_status) == (
        body["error"],
        body["message"],
        extra,
        status,
    )
    assert error.exit_code == exit_code
    # A refusal is an answer: it is not sent again.
    assert len(api.requests_to("POST", "/jobs")) == 1


def test_an_error_that_is_not_the_contract_keeps_the_status_and_text(
    api: ContractServer, client: CloudClient
) -> None:
    api.reply("GET", "/jobs", Reply(502, text="<html>Bad Gateway</html>", content_type="text/html"))
    with pytest.raises(CloudError) as raised:
        client.list_jobs()
    error = raised.value
    assert (error.code, error.http_status, error.exit_code) == ("http_502", 502, EXIT_SYSTEM_ERROR)
    assert f"GET {api.api_url}/jobs answered HTTP 502" in error.message
    assert "Bad Gateway" in error.message


def test_a_bare_404_hints_at_the_api_prefix(api: ContractServer, client: CloudClient) -> None:
    api.reply("GET", "/jobs", Reply(404, {"detail": "Not Found"}))
    with pytest.raises(CloudError) as raised:
        client.list_jobs()
    assert raised.value.code == "not_found"
    assert raised.value.hint is not None
    assert "/v1" in raised.value.hint


@pytest.mark.parametrize(
    "reply",
    [
        Reply(200, text="not json", content_type="text/plain"),
        Reply(200, {"id": JOB_ID}),
        Reply(200, ["a", "list"]),
    ],
)
def test_a_success_outside_the_contract_is_a_system_error(
    api: ContractServer, client: CloudClient, reply: Reply
) -> None:
    api.reply("GET", f"/jobs/{JOB_ID}", reply)
    with pytest.raises(CloudError) as raised:
        client.get_job(JOB_ID)
    assert raised.value.code == "bad_response"
    assert raised.value.exit_code == EXIT_SYSTEM_ERROR
    assert f"/jobs/{JOB_ID}" in raised.value.message


def test_a_slow_answer_times_out(api: ContractServer, log: list[str]) -> None:
    api.reply("GET", f"/jobs/{JOB_ID}", Reply(200, job_body(), delay=1))
    with (
        CloudClient(Settings(api.api_url, timeout=0.3), TOKEN, log=log.append) as client,
        pytest.raises(CloudError) as raised,
    ):
        client.get_job(JOB_ID)
    error = raised.value
    assert (error.code, error.exit_code) == ("timeout", EXIT_SYSTEM_ERROR)
    assert f"no answer from {api.api_url}/jobs/{JOB_ID} within 0.3 seconds" == error.message
    assert error.hint is not None
    assert "CHAKRAVARTI_TIMEOUT" in error.hint


def test_a_service_that_is_not_there_is_unreachable(log: list[str]) -> None:
    api_url = f"http://127.0.0.1:{closed_port()}/v1"
    with (
        CloudClient(Settings(api_url, timeout=5), TOKEN, log=log.append) as client,
        pytest.raises(CloudError) as raised,
    ):
        client.list_jobs()
    error = raised.value
    assert (error.code, error.http_status, error.exit_code) == ("unreachable", None, 2)
    assert error.message.startswith(f"could not reach Chakravarti Cloud at {api_url}/jobs")
    assert error.hint is not None
    assert "CKRV_API_URL" in error.hint
    assert "ckrv-cloud up" in error.hint
    # A refused connection never reached the service: tried twice.
    assert len([line for line in log if "no connection" in line]) == 2


def test_requests_are_logged_with_their_status(
    api: ContractServer, client: CloudClient, log: list[str]
) -> None:
    api.reply("GET", f"/jobs/{JOB_ID}", Reply(200, job_body()))
    client.get_job(JOB_ID)
    (line,) = log
    assert line.startswith(f"HTTP GET {api.api_url}/jobs/{JOB_ID} -> 200 (")
    assert TOKEN not in line


def test_job_ids_cannot_leave_the_jobs_path(api: ContractServer, client: CloudClient) -> None:
    with pytest.raises(CloudError):
        client.get_job("../users/me")
    (request,) = api.received
    assert request.path == "/v1/jobs/..%2Fusers%2Fme"
