"""Driving jobs as the other services would, and looking at what the gateway stored.

Events are appended through the event store with the state machine's `decide`,
exactly as the dispatcher, watcher and artifacts services will; the gateway's
projector folds them into the read model, which the tests poll through the API.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import httpx
from nats.aio.client import Client
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from ckrv.events.catalog import JobSucceededData, RunnerBackend
from ckrv.events.envelope import utc_now
from ckrv.events.state import (
    DispatchJob,
    JobCommand,
    QueueJob,
    StartJob,
    SucceedJob,
    decide,
)
from ckrv.events.store import JobEventStore
from ckrv.events.subjects import JOBS_STREAM

SERVICE = "service:tests"
POLL_SECONDS = 0.01


async def drive(store: JobEventStore, job_id: UUID, *commands: JobCommand) -> None:
    """Append the events each command decides, one command after the other."""
    for command in commands:
        await store.execute(job_id, functools.partial(decide, command=command))


async def start(store: JobEventStore, job_id: UUID, *, at: datetime | None = None) -> None:
    """Queue, dispatch and start the job's first attempt; it runs from `at` (default now)."""
    await drive(
        store,
        job_id,
        QueueJob(actor=SERVICE),
        DispatchJob(actor=SERVICE, runner=RunnerBackend.LOCAL),
        StartJob(actor=SERVICE, attempt=1, occurred_at=at or utc_now()),
    )


async def succeed(
    store: JobEventStore, job_id: UUID, *, at: datetime | None = None, attempt: int = 1
) -> None:
    result = JobSucceededData(attempt=attempt, summary="Added a login page.")
    command = SucceedJob(actor=SERVICE, result=result, occurred_at=at or utc_now())
    await drive(store, job_id, command)


def has_status(status: str) -> Callable[[dict[str, Any]], bool]:
    return lambda job: bool(job["status"] == status)


async def wait_for_job(
    client: httpx.Client,
    job_id: UUID | str,
    condition: Callable[[dict[str, Any]], bool],
    *,
    within: float = 5.0,
) -> dict[str, Any]:
    """Poll `GET /jobs/{id}` until the job satisfies `condition`; fail after `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        response = client.get(f"/jobs/{job_id}")
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        if condition(job):
            return job
        assert loop.time() < deadline, f"job {job_id} did not get there in {within} s: {job}"
        await asyncio.sleep(POLL_SECONDS)


@dataclass(frozen=True)
class StoredRows:
    """What PostgreSQL holds for one user."""

    jobs: int
    outbox: int
    quota_charges: int
    idempotency_keys: int


async def stored_rows(database: AsyncEngine, user_id: UUID | str) -> StoredRows:
    # Outbox rows are found by the owner inside their event, so an orphan would count too.
    queries = {
        "jobs": "select count(*) from jobs where user_id = :user",
        "outbox": "select count(*) from outbox "
        "where cast(payload as json) -> 'data' ->> 'user_id' = cast(cast(:user as uuid) as text)",
        "quota_charges": "select count(*) from quota_charges where user_id = :user",
        "idempotency_keys": "select count(*) from idempotency_keys where user_id = :user",
    }
    counts: dict[str, int] = {}
    async with database.connect() as connection:
        for name, query in queries.items():
            counts[name] = int(
                (await connection.execute(text(query), {"user": UUID(str(user_id))})).scalar_one()
            )
    return StoredRows(**counts)


async def last_stream_sequence(nc: Client) -> int:
    info = await nc.jetstream().stream_info(JOBS_STREAM)
    return int(info.state.last_seq)


async def events_of_user_after(nc: Client, sequence: int, user_id: UUID | str) -> list[str]:
    """Subjects of the events appended after `sequence` that submit a job of the user."""
    js = nc.jetstream()
    found: list[str] = []
    for next_sequence in range(sequence + 1, await last_stream_sequence(nc) + 1):
        message = await js.get_msg(JOBS_STREAM, next_sequence)
        payload = json.loads(message.data or b"{}")
        if payload.get("data", {}).get("user_id") == str(user_id):
            found.append(str(message.subject))
    return found
