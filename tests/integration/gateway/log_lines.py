"""Log lines as the log-relay publishes them, and a job's log stream read as a client reads it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import httpx
from httpx_sse import EventSource, ServerSentEvent
from nats.aio.client import Client

from ckrv.events.subjects import LOGS_STREAM, job_log_subject
from ckrv.schemas.logs import LogEntry, LogLevel

# Long enough for a loaded machine, short enough that a missing event fails the test soon.
EVENT_WAIT_SECONDS = 20.0


def log_entry(
    seq: int, *, attempt: int = 1, level: LogLevel = LogLevel.INFO, padding: int = 0
) -> LogEntry:
    """Line `seq`, whose message is `line <seq>` and `padding` more characters."""
    return LogEntry(
        timestamp=datetime.now(UTC),
        level=level,
        source="worker",
        message=f"line {seq}" + "." * padding,
        phase="executing",
        attempt=attempt,
        seq=seq,
    )


async def publish(nc: Client, job_id: UUID, entries: Iterable[LogEntry]) -> list[int]:
    """Publish on `logs.<job_id>` as the relay does; the stream sequence of each line."""
    js = nc.jetstream()
    sequences = []
    for entry in entries:
        ack = await js.publish(
            job_log_subject(job_id), entry.model_dump_json().encode(), stream=LOGS_STREAM
        )
        sequences.append(ack.seq)
    return sequences


async def publish_lines(
    nc: Client, job_id: UUID, seqs: Iterable[int], *, padding: int = 0
) -> list[int]:
    return await publish(nc, job_id, (log_entry(seq, padding=padding) for seq in seqs))


def messages(events: Iterable[ServerSentEvent]) -> list[str]:
    """The `message` of each line event."""
    return [json.loads(event.data)["message"] for event in events if is_line(event)]


def seqs(events: Iterable[ServerSentEvent]) -> list[int]:
    """The `seq` of each line event."""
    return [json.loads(event.data)["seq"] for event in events if is_line(event)]


def is_line(event: ServerSentEvent) -> bool:
    return event.event == "message" and event.data not in ("[DONE]", "")


def is_heartbeat(event: ServerSentEvent) -> bool:
    # httpx-sse reports a comment as an empty event once the stream has had an id.
    return event.event == "message" and not event.data


class LogStream:
    """An open event stream of a job's log."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._events = EventSource(response).aiter_sse()

    async def next(self) -> ServerSentEvent:
        async with asyncio.timeout(EVENT_WAIT_SECONDS):
            while True:
                event = await anext(self._events)
                if not is_heartbeat(event):
                    return event

    async def lines(self, count: int) -> list[ServerSentEvent]:
        """The next `count` events, which must all be lines."""
        events = [await self.next() for _ in range(count)]
        assert all(is_line(event) for event in events), [event.event for event in events]
        return events

    async def rest(self) -> list[ServerSentEvent]:
        """Every event up to the end of the stream."""
        async with asyncio.timeout(EVENT_WAIT_SECONDS):
            return [event async for event in self._events if not is_heartbeat(event)]


@asynccontextmanager
async def log_stream(
    client: httpx.AsyncClient, job_id: UUID | str, **params: Any
) -> AsyncIterator[LogStream]:
    """`GET /jobs/{id}/logs?follow=true` as an event stream; `headers` go with the request."""
    headers = params.pop("headers", {})
    async with client.stream(
        "GET",
        f"/jobs/{job_id}/logs",
        params={"follow": "true", **params},
        headers={"Accept": "text/event-stream", **headers},
    ) as response:
        assert response.status_code == 200, (await response.aread()).decode()
        yield LogStream(response)
