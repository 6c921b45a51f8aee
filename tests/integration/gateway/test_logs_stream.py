"""Following a job's log as Server-Sent Events, and its history after the LOGS retention.

A gateway of the module's own, with short heartbeats, a short quiet time after a
job's end and small per-stream queues, on the session's NATS, PostgreSQL and
SeaweedFS. Lines are published on LOGS as the log-relay publishes them; jobs
are moved by appending their events as the other services do.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID, uuid4

import httpx
import pytest
from nats.aio.client import Client

from ckrv.events.catalog import JobArtifactStoredData
from ckrv.events.state import FailJob, RecordArtifact
from ckrv.events.store import JobEventStore
from ckrv.events.subjects import LOGS_STREAM, job_log_subject
from ckrv.services.common.storage import artifact_key
from ckrv.services.stack.nats_server import NatsServer
from ckrv.services.stack.postgres_server import PostgresServer
from ckrv.services.stack.seaweed_server import SeaweedServer
from tests.integration.gateway.cutting_proxy import CuttingProxy
from tests.integration.gateway.jobs import job_body
from tests.integration.gateway.lifecycle import SERVICE, drive, start, succeed
from tests.integration.gateway.log_lines import (
    EVENT_WAIT_SECONDS,
    log_entry,
    log_stream,
    messages,
    publish_lines,
    seqs,
)
from tests.running_gateway import RunningGateway, started_gateway

pytestmark = pytest.mark.integration

FOLLOWER_QUEUE_LINES = 4
HEARTBEAT_SECONDS = 0.2


@pytest.fixture(scope="module")
async def logs_gateway(
    nats_server: NatsServer, postgres_server: PostgresServer, s3_server: SeaweedServer
) -> AsyncIterator[RunningGateway]:
    switches = {
        "CKRV_S3_ENDPOINT": s3_server.endpoint,
        "CKRV_S3_ACCESS_KEY": s3_server.access_key,
        "CKRV_S3_SECRET_KEY": s3_server.secret_key,
        "CKRV_S3_REGION": s3_server.region,
        "CKRV_S3_BUCKET": s3_server.bucket,
        "CKRV_GATEWAY_LOG_HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS),
        "CKRV_GATEWAY_LOG_END_QUIET_SECONDS": "0.2",
        "CKRV_GATEWAY_LOG_FOLLOWER_QUEUE_LINES": str(FOLLOWER_QUEUE_LINES),
        "CKRV_GATEWAY_LOG_RETRY_MILLISECONDS": "250",
    }
    async with started_gateway(
        nats_url=nats_server.url, database_url=postgres_server.dsn, switches=switches
    ) as gateway:
        yield gateway


@pytest.fixture
async def client(logs_gateway: RunningGateway) -> AsyncIterator[httpx.AsyncClient]:
    token = logs_gateway.token(f"logs-{uuid4().hex[:12]}@example.com")
    async with httpx.AsyncClient(
        base_url=logs_gateway.api_url,
        headers={"Authorization": f"Bearer {token}"},
        timeout=EVENT_WAIT_SECONDS,
    ) as client:
        yield client


async def new_job(client: httpx.AsyncClient) -> UUID:
    response = await client.post("/jobs", json=job_body())
    assert response.status_code == 201, response.text
    return UUID(response.json()["id"])


async def test_a_followed_log_gives_history_then_live_lines_then_the_end(
    client: httpx.AsyncClient, nc: Client, store: JobEventStore
) -> None:
    job_id = await new_job(client)
    await start(store, job_id)
    sequences = await publish_lines(nc, job_id, range(1, 4))

    async with log_stream(client, job_id) as stream:
        headers = stream.response.headers
        assert headers["content-type"].startswith("text/event-stream")
        assert headers["cache-control"] == "no-cache"
        assert headers["x-accel-buffering"] == "no"
        history = await stream.lines(3)
        assert messages(history) == ["line 1", "line 2", "line 3"]
        assert [int(event.id) for event in history] == sequences
        assert history[0].retry == 250
        entry = json.loads(history[0].data)
        assert entry["seq"] == 1
        assert {"timestamp", "level", "source", "message", "attempt"} <= entry.keys()

        sequences += await publish_lines(nc, job_id, range(4, 6))
        live = await stream.lines(2)
        assert messages(live) == ["line 4", "line 5"]
        assert [int(event.id) for event in [*history, *live]] == sequences

        await succeed(store, job_id)
        end, done = await stream.rest()
        assert end.event == "end"
        assert json.loads(end.data) == {"status": "succeeded"}
        assert done.data == "[DONE]"


async def test_last_event_id_resumes_right_after_that_line(
    client: httpx.AsyncClient, nc: Client, store: JobEventStore
) -> None:
    job_id = await new_job(client)
    await start(store, job_id)
    sequences = await publish_lines(nc, job_id, range(1, 6))
    await succeed(store, job_id)

    async with log_stream(client, job_id, headers={"Last-Event-ID": str(sequences[1])}) as stream:
        assert messages(await stream.rest()) == ["line 3", "line 4", "line 5"]
    # As browsers cannot set the header on a first connection, the query says the same.
    async with log_stream(client, job_id, last_event_id=str(sequences[3])) as stream:
        assert messages(await stream.rest()) == ["line 5"]
    # The header wins over the URL: a browser reconnects with the URL it started with.
    async with log_stream(
        client, job_id, last_event_id="1", headers={"Last-Event-ID": str(sequences[-1])}
    ) as stream:
        events = await stream.rest()
        assert messages(events) == []
        assert [event.event for event in events] == ["end", "message"]


async def test_an_event_id_no_longer_kept_restarts_the_log_with_a_reset(
    client: httpx.AsyncClient, nc: Client, store: JobEventStore
) -> None:
    job_id = await new_job(client)
    await start(store, job_id)
    sequences = await publish_lines(nc, job_id, range(1, 5))
    await succeed(store, job_id)
    # As the stream's age limit would: the job's first lines are gone.
    await nc.jetstream().purge_stream(
        LOGS_STREAM, subject=job_log_subject(job_id), seq=sequences[2]
    )

    async with log_stream(client, job_id, headers={"Last-Event-ID": str(sequences[0])}) as stream:
        events = await stream.rest()
    assert events[0].event == "reset"
    assert messages(events) == ["line 3", "line 4"]
    assert events[-2].event == "end"


async def test_an_idle_stream_sends_heartbeats(
    client: httpx.AsyncClient, nc: Client, store: JobEventStore
) -> None:
    job_id = await new_job(client)
    async with client.stream(
        "GET", f"/jobs/{job_id}/logs", headers={"Accept": "text/event-stream"}
    ) as response:
        assert response.status_code == 200
        lines = response.aiter_lines()
        received: list[str] = []
        async with asyncio.timeout(EVENT_WAIT_SECONDS):
            while received.count(": heartbeat") < 2:
                received.append(await anext(lines))
            await publish_lines(nc, job_id, [1])
            while not received[-1].startswith("data:"):
                received.append(await anext(lines))
    # The first event brings the reconnection delay along.
    first_event = received[received.index("retry: 250") :]
    assert received[: -len(first_event)].count(": heartbeat") >= 2
    assert first_event[1].startswith("id: ")
    assert json.loads(first_event[2].removeprefix("data: "))["message"] == "line 1"


async def test_tail_starts_a_stream_and_a_page_at_the_last_lines(
    client: httpx.AsyncClient, nc: Client, store: JobEventStore
) -> None:
    job_id = await new_job(client)
    await start(store, job_id)
    await publish_lines(nc, job_id, range(1, 41))

    async with log_stream(client, job_id, tail=3) as stream:
        assert messages(await stream.lines(3)) == ["line 38", "line 39", "line 40"]
        await publish_lines(nc, job_id, [41])
        assert messages(await stream.lines(1)) == ["line 41"]

    page = (await client.get(f"/jobs/{job_id}/logs", params={"tail": 2})).json()
    assert [line["seq"] for line in page["logs"]] == [40, 41]
    assert page["next"] == 41


async def test_a_reader_that_falls_behind_stalls_nobody_and_loses_no_line(
    client: httpx.AsyncClient, nc: Client, logs_gateway: RunningGateway
) -> None:
    job_id = await new_job(client)
    catch_ups_before = await catch_ups(logs_gateway)
    # More than the socket buffers between the gateway and a reader that reads nothing hold
    # (a few MiB on loopback), so the gateway cannot hand that reader its lines for a while.
    line_count, padding = 600, 15_000
    wanted = list(range(2, line_count + 1))
    async with log_stream(client, job_id) as slow, log_stream(client, job_id) as fast:
        # Both streams follow (each has had its first line) before the flood comes.
        await publish_lines(nc, job_id, [1])
        assert seqs(await slow.lines(1)) == seqs(await fast.lines(1)) == [1]
        await publish_lines(nc, job_id, wanted, padding=padding)
        fast_lines = await fast.lines(len(wanted))
        assert seqs(fast_lines) == wanted
        slow_lines = await slow.lines(len(wanted))
    assert seqs(slow_lines) == wanted
    assert [event.id for event in slow_lines] == [event.id for event in fast_lines]
    assert await catch_ups(logs_gateway) > catch_ups_before


async def catch_ups(gateway: RunningGateway) -> float:
    """How often the gateway's streams have fallen behind their live lines."""
    metrics = httpx.get(f"{gateway.url}/metrics").text
    found = re.search(r"^ckrv_gateway_log_catch_ups_total (\S+)$", metrics, re.MULTILINE)
    assert found is not None, metrics
    return float(found.group(1))


async def test_after_the_retention_the_log_comes_from_the_archive(
    client: httpx.AsyncClient, nc: Client, store: JobEventStore, s3_server: SeaweedServer
) -> None:
    job_id = await new_job(client)
    await start(store, job_id)
    await publish_lines(nc, job_id, range(1, 6))
    archived = b"".join(log_entry(seq).model_dump_json().encode() + b"\n" for seq in range(1, 6))
    key = artifact_key(job_id, 1, "logs.jsonl")
    await asyncio.to_thread(
        s3_server.client().put_object, s3_server.bucket, key, io.BytesIO(archived), len(archived)
    )
    artifact = JobArtifactStoredData(
        attempt=1,
        name="logs.jsonl",
        key=key,
        size_bytes=len(archived),
        sha256=hashlib.sha256(archived).hexdigest(),
    )
    # Seven days later: the job ended long ago, and LOGS no longer holds its first lines.
    await succeed(store, job_id, at=datetime.now(UTC) - timedelta(days=7))
    await drive(store, job_id, RecordArtifact(actor=SERVICE, artifact=artifact))
    await nc.jetstream().purge_stream(LOGS_STREAM, subject=job_log_subject(job_id), keep=2)

    page = await wait_for_archive(client, job_id)
    assert [line["message"] for line in page["logs"]] == [f"line {seq}" for seq in range(1, 6)]
    assert {line["id"] for line in page["logs"]} == {None}
    assert page["next"] is None
    tail = (await client.get(f"/jobs/{job_id}/logs", params={"tail": 2})).json()
    assert [line["seq"] for line in tail["logs"]] == [4, 5]
    later = (await client.get(f"/jobs/{job_id}/logs", params={"after": 3, "limit": 1})).json()
    assert ([line["seq"] for line in later["logs"]], later["next"]) == ([4], 4)

    async with log_stream(client, job_id) as stream:
        events = await stream.rest()
    assert messages(events) == [f"line {seq}" for seq in range(1, 6)]
    assert [event.event for event in events[-2:]] == ["end", "message"]
    assert json.loads(events[-2].data) == {"status": "succeeded"}


async def wait_for_archive(client: httpx.AsyncClient, job_id: UUID) -> dict[str, Any]:
    """The first page once it comes from the archive (the read model learns of it shortly)."""
    async with asyncio.timeout(EVENT_WAIT_SECONDS):
        while True:
            page: dict[str, Any] = (await client.get(f"/jobs/{job_id}/logs")).json()
            if page["logs"] and page["logs"][0]["id"] is None:
                return page
            await asyncio.sleep(0.05)


async def test_ckrv_logs_follows_through_a_cut_connection_to_the_jobs_failure(
    logs_gateway: RunningGateway, client: httpx.AsyncClient, nc: Client, store: JobEventStore
) -> None:
    job_id = await new_job(client)
    await start(store, job_id)
    await publish_lines(nc, job_id, range(1, 4))
    gateway_address = urlsplit(logs_gateway.url)
    assert gateway_address.hostname is not None
    assert gateway_address.port is not None
    proxy = CuttingProxy(gateway_address.hostname, gateway_address.port)
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith("CKRV_")
    } | {
        "CKRV_API_URL": f"{proxy.url}/v1",
        "CKRV_TOKEN": client.headers["authorization"].removeprefix("Bearer "),
    }
    ckrv = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ckrv.cli.app",
        "logs",
        "-f",
        str(job_id),
        "--no-color",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environment,
    )
    assert ckrv.stdout is not None
    try:
        async with asyncio.timeout(EVENT_WAIT_SECONDS):
            shown = [(await ckrv.stdout.readline()).decode() for _ in range(3)]
            proxy.cut()
            await publish_lines(nc, job_id, range(4, 6))
            failure = FailJob(
                actor=SERVICE, attempt=1, error_code="agent_failed", error_message="tests failed"
            )
            await drive(store, job_id, failure)
            out, err = await ckrv.communicate()
    finally:
        proxy.close()
        if ckrv.returncode is None:
            ckrv.kill()
    shown += out.decode().splitlines(keepends=True)
    assert [text.split()[-1] for text in shown] == ["1", "2", "3", "4", "5"]
    assert ckrv.returncode == 1
    assert "connection lost" in err.decode()
    assert f"job {job_id} failed: tests failed" in err.decode()
    assert proxy.connections >= 2
