"""A job's log as JSON pages, who may read it (token, stream ticket, sign-in cookie), bad input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import httpx
import pytest
from nats.aio.client import Client
from starlette.responses import Response

from ckrv.events.store import JobEventStore
from ckrv.services.gateway.identity.browser_session import (
    COOKIE_NAME,
    BrowserSession,
    SessionCookies,
)
from ckrv.services.gateway.log_tickets import LogTickets
from ckrv.services.gateway.settings import GatewaySettings
from tests.integration.gateway.conftest import ClientFactory
from tests.integration.gateway.jobs import job_body
from tests.integration.gateway.lifecycle import has_status, start, succeed, wait_for_job
from tests.integration.gateway.log_lines import publish_lines
from tests.running_gateway import RunningGateway

pytestmark = pytest.mark.integration


def new_job(client: httpx.Client) -> UUID:
    response = client.post("/jobs", json=job_body())
    assert response.status_code == 201, response.text
    return UUID(response.json()["id"])


async def test_pages_follow_each_other_by_line_number(client: httpx.Client, nc: Client) -> None:
    job_id = new_job(client)
    sequences = await publish_lines(nc, job_id, range(1, 8))

    whole = client.get(f"/jobs/{job_id}/logs")
    assert whole.status_code == 200
    assert whole.headers["content-type"] == "application/json"
    body = whole.json()
    assert [line["seq"] for line in body["logs"]] == list(range(1, 8))
    assert [line["id"] for line in body["logs"]] == sequences
    assert body["logs"][0]["message"] == "line 1"
    assert {"timestamp", "level", "source", "phase", "attempt"} <= body["logs"][0].keys()
    # The job runs: more lines may come after the last one.
    assert body["next"] == 7

    first = client.get(f"/jobs/{job_id}/logs", params={"limit": 3}).json()
    second = client.get(f"/jobs/{job_id}/logs", params={"limit": 3, "after": first["next"]})
    third = client.get(f"/jobs/{job_id}/logs", params={"limit": 3, "after": 6})
    assert [line["seq"] for line in first["logs"]] == [1, 2, 3]
    assert [line["seq"] for line in second.json()["logs"]] == [4, 5, 6]
    assert [line["seq"] for line in third.json()["logs"]] == [7]
    assert third.json()["next"] == 7
    nothing_yet = client.get(f"/jobs/{job_id}/logs", params={"after": 7}).json()
    assert nothing_yet == {"logs": [], "next": 7}
    tail = client.get(f"/jobs/{job_id}/logs", params={"tail": 2}).json()
    assert [line["seq"] for line in tail["logs"]] == [6, 7]


async def test_an_ended_job_has_no_next_page(
    client: httpx.Client, nc: Client, store: JobEventStore
) -> None:
    job_id = new_job(client)
    await start(store, job_id)
    await publish_lines(nc, job_id, range(1, 4))
    await succeed(store, job_id, at=datetime.now(UTC) - timedelta(minutes=1))
    await wait_for_status(client, job_id, "succeeded")

    body = client.get(f"/jobs/{job_id}/logs", params={"limit": 2}).json()
    assert ([line["seq"] for line in body["logs"]], body["next"]) == ([1, 2], 2)
    body = client.get(f"/jobs/{job_id}/logs", params={"limit": 2, "after": 2}).json()
    assert ([line["seq"] for line in body["logs"]], body["next"]) == ([3], None)


async def test_the_client_with_the_doubled_prefix_is_served(
    client: httpx.Client, nc: Client, store: JobEventStore, gateway: RunningGateway
) -> None:
    job_id = new_job(client)
    await start(store, job_id)
    await publish_lines(nc, job_id, range(1, 3))
    await succeed(store, job_id, at=datetime.now(UTC) - timedelta(minutes=1))
    await wait_for_status(client, job_id, "succeeded")

    # What the open-source client sends: its API URL (ending in /v1) + /v1/jobs/{id}/logs.
    url = f"{gateway.api_url}/v1/jobs/{job_id}/logs"
    headers = {**client.headers, "Accept": "text/event-stream"}
    with httpx.stream("GET", url, params={"follow": "true"}, headers=headers) as response:
        assert response.status_code == 200
        data = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert [line.removeprefix("data: ")[:1] for line in data] == ["{", "{", "{", "["]
    assert data[-1] == "data: [DONE]"
    assert client.get(f"{gateway.api_url}/v1/jobs/{job_id}/logs").json()["next"] is None


def test_another_users_job_has_no_log(client_for: ClientFactory) -> None:
    owner, stranger = client_for(), client_for()
    job_id = new_job(owner)
    for response in (
        stranger.get(f"/jobs/{job_id}/logs"),
        stranger.get(f"/jobs/{job_id}/logs", params={"follow": "true"}),
        stranger.post(f"/jobs/{job_id}/logs/ticket"),
        stranger.get(f"/jobs/{uuid4()}/logs"),
    ):
        assert response.status_code == 404
        assert response.json()["error"] == "not_found"


def test_a_log_needs_proof_of_who_asks(gateway: RunningGateway, client: httpx.Client) -> None:
    job_id = new_job(client)
    url = f"{gateway.api_url}/jobs/{job_id}/logs"
    for headers in ({}, {"Authorization": "Bearer nonsense"}):
        response = httpx.get(url, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"] == "unauthorized"
    assert "ticket" in httpx.get(url).json()["message"]
    assert httpx.post(f"{url}/ticket").status_code == 401


def test_a_ticket_opens_one_jobs_log_and_nothing_else(
    gateway: RunningGateway, client: httpx.Client
) -> None:
    job_id, other_job_id = new_job(client), new_job(client)
    issued = client.post(f"/jobs/{job_id}/logs/ticket")
    assert issued.status_code == 201
    ticket = issued.json()["ticket"]
    assert issued.json()["url"] == f"/v1/jobs/{job_id}/logs?ticket={ticket}"
    assert issued.json()["valid_seconds"] > 0

    with_ticket = httpx.get(f"{gateway.url}{issued.json()['url']}")
    assert with_ticket.status_code == 200
    assert with_ticket.json() == {"logs": [], "next": 0}
    refused = [
        httpx.get(f"{gateway.api_url}/jobs/{other_job_id}/logs", params={"ticket": ticket}),
        httpx.get(f"{gateway.api_url}/jobs/{job_id}", params={"ticket": ticket}),
        httpx.get(f"{gateway.api_url}/jobs/{job_id}/logs", params={"ticket": ticket[:-2]}),
        httpx.get(f"{gateway.api_url}/jobs/{job_id}/logs", params={"ticket": "x" * 40}),
    ]
    assert [response.status_code for response in refused] == [401] * 4
    # Signed with the right secret but for the purpose of another: not a ticket either.
    session_cookie = cookie_for(UUID(client.get("/users/me").json()["id"]))
    response = httpx.get(f"{gateway.api_url}/jobs/{job_id}/logs", params={"ticket": session_cookie})
    assert response.status_code == 401


async def test_a_ticket_outlives_its_short_validity_only_while_the_job_runs(
    gateway: RunningGateway, client: httpx.Client, store: JobEventStore
) -> None:
    job_id = new_job(client)
    user_id = UUID(client.get("/users/me").json()["id"])
    url = f"{gateway.api_url}/jobs/{job_id}/logs"
    # A ticket issued an hour ago, with the session secret the gateway has in development.
    tickets = LogTickets(GatewaySettings(env="dev").session_secret.get_secret_value())
    old_ticket = tickets.issue(user_id, job_id, at=datetime.now(UTC) - timedelta(hours=1))
    assert httpx.get(url, params={"ticket": old_ticket}).status_code == 200
    await start(store, job_id)
    await succeed(store, job_id, at=datetime.now(UTC) - timedelta(minutes=30))
    await wait_for_status(client, job_id, "succeeded")
    assert httpx.get(url, params={"ticket": old_ticket}).status_code == 401


def test_the_sign_in_cookie_opens_its_users_logs(
    gateway: RunningGateway, client_for: ClientFactory
) -> None:
    owner, stranger = client_for(), client_for()
    job_id = new_job(owner)
    url = f"{gateway.api_url}/jobs/{job_id}/logs"
    owner_cookie = cookie_for(UUID(owner.get("/users/me").json()["id"]))
    stranger_cookie = cookie_for(UUID(stranger.get("/users/me").json()["id"]))
    assert httpx.get(url, cookies={COOKIE_NAME: owner_cookie}).status_code == 200
    assert httpx.get(url, cookies={COOKIE_NAME: stranger_cookie}).status_code == 404
    assert httpx.get(url, cookies={COOKIE_NAME: owner_cookie[:-3]}).status_code == 401


def test_bad_log_requests_are_refused_with_their_field(client: httpx.Client) -> None:
    job_id = new_job(client)
    for params, headers, field in (
        ({"tail": 0}, {}, "tail"),
        ({"tail": 2, "after": 1}, {}, "tail"),
        ({"after": -1}, {}, "after"),
        ({"limit": 5000}, {}, "limit"),
        ({"follow": "true"}, {"Last-Event-ID": "yesterday"}, "Last-Event-ID"),
        ({"follow": "true", "last_event_id": "-4"}, {}, "Last-Event-ID"),
    ):
        response = client.get(f"/jobs/{job_id}/logs", params=params, headers=headers)
        assert response.status_code == 422, (params, response.text)
        assert response.json()["error"] == "validation_error"
        assert response.json()["details"][0]["field"] == field
    assert client.get("/jobs/not-a-job/logs").status_code == 422


def cookie_for(user_id: UUID) -> str:
    """The activation page's cookie of a user signed in there (the gateway's dev secret)."""
    settings = GatewaySettings(env="dev")
    cookies = SessionCookies(
        secret=settings.session_secret.get_secret_value(),
        max_age_seconds=settings.session_max_age_seconds,
        secure=False,
    )
    response = Response()
    cookies.write(response, BrowserSession.signed_in(user_id))
    return response.headers["set-cookie"].split(";", 1)[0].split("=", 1)[1]


async def wait_for_status(client: httpx.Client, job_id: UUID, status: str) -> None:
    await wait_for_job(client, job_id, has_status(status))
