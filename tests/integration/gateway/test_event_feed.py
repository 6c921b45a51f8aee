"""`GET /v1/events`: the caller's job events as a resumable Server-Sent Events feed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

import httpx
import pytest

from tests.integration.gateway.jobs import job_body
from tests.running_gateway import RunningGateway

pytestmark = pytest.mark.integration

WAIT_SECONDS = 15.0


@dataclass(frozen=True)
class FeedEvent:
    id: int
    type: str
    data: dict[str, Any]


class Feed:
    """An open `GET /v1/events` stream, read one SSE event at a time."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def opened(self) -> None:
        """Once the first line (`retry:`) is in, the feed is subscribed."""
        async with asyncio.timeout(WAIT_SECONDS):
            assert (await self._lines.__anext__()).startswith("retry:")

    async def next_event(self) -> FeedEvent:
        async with asyncio.timeout(WAIT_SECONDS):
            fields: dict[str, str] = {}
            async for line in self._lines:
                if line.startswith(":") or line.startswith("retry:"):
                    continue
                if not line:
                    if "data" in fields:
                        return FeedEvent(
                            int(fields["id"]), fields["event"], json.loads(fields["data"])
                        )
                    continue
                name, _, value = line.partition(": ")
                fields[name] = value
        raise AssertionError("the feed ended")


def api(gateway: RunningGateway, tier: str = "pro") -> httpx.AsyncClient:
    token = gateway.token(f"feed-{uuid4().hex[:12]}@example.com", tier)
    return httpx.AsyncClient(
        base_url=gateway.api_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


@asynccontextmanager
async def feed(client: httpx.AsyncClient, **params: Any) -> AsyncIterator[Feed]:
    headers = {"Accept": "text/event-stream"}
    if "last_event_id" in params:
        headers["Last-Event-ID"] = str(params.pop("last_event_id"))
    async with client.stream("GET", "/events", params=params, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        stream = Feed(response)
        await stream.opened()
        yield stream


async def test_a_users_feed_carries_their_events_only_and_resumes_after_an_id(
    gateway: RunningGateway,
) -> None:
    async with api(gateway) as alice, api(gateway) as bob:
        async with feed(alice) as alices:
            # Bob's job comes first: Alice's feed must pass over it.
            (await bob.post("/jobs", json=job_body())).raise_for_status()
            job_id = (await alice.post("/jobs", json=job_body())).json()["id"]
            submitted = await alices.next_event()
            assert (submitted.type, submitted.data["job_id"]) == ("job.submitted", job_id)
            assert submitted.data["data"]["git_repo_url"] == job_body()["git_repo_url"]
            (await alice.post(f"/jobs/{job_id}/cancel")).raise_for_status()
            cancel = await alices.next_event()
            assert (cancel.type, cancel.data["job_id"]) == ("job.cancel-requested", job_id)
            assert cancel.id > submitted.id
        async with feed(alice, last_event_id=submitted.id) as resumed:
            again = await resumed.next_event()
        assert (again.id, again.type) == (cancel.id, "job.cancel-requested")


async def test_a_feed_of_one_job_and_some_types(gateway: RunningGateway) -> None:
    async with api(gateway) as client:
        first = (await client.post("/jobs", json=job_body())).json()["id"]
        second = (await client.post("/jobs", json=job_body())).json()["id"]
        for job_id in (first, second):
            (await client.post(f"/jobs/{job_id}/cancel")).raise_for_status()
        # From the start of the stream, only the second job's cancel requests.
        async with feed(
            client, job=second, type="job.cancel-requested", last_event_id=0
        ) as cancels:
            event = await cancels.next_event()
        assert (event.type, event.data["job_id"]) == ("job.cancel-requested", second)


async def test_bad_feed_requests_are_refused(gateway: RunningGateway) -> None:
    async with api(gateway) as client, api(gateway) as other:
        foreign = (await other.post("/jobs", json=job_body())).json()["id"]
        cases = {
            "unknown type": ({"type": "job.exploded"}, 422, "validation_error"),
            "another user's job": ({"job": foreign}, 404, "not_found"),
            "a bad event id": ({"last_event_id": "soon"}, 422, "validation_error"),
            "not a job id": ({"job": "42"}, 422, "validation_error"),
        }
        for reason, (params, status, code) in cases.items():
            response = await client.get("/events", params=params)
            assert response.status_code == status, reason
            assert response.json()["error"] == code, reason
        anonymous = await client.get("/events", headers={"Authorization": ""})
        assert anonymous.status_code == 401
