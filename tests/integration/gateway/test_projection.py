"""The jobs read model: order-proof folding, and a rebuild from JOBS that gives identical rows."""

from __future__ import annotations

import asyncio
import functools
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID, uuid4

import httpx
import nats
import pytest
from nats.aio.client import Client
from sqlalchemy import text

from ckrv.events.catalog import JobSucceededData, RunnerBackend
from ckrv.events.state import (
    ChangePhase,
    DispatchJob,
    JobState,
    QueueJob,
    StartJob,
    SucceedJob,
    decide,
    fold,
)
from ckrv.events.store import JobEventStore
from ckrv.services.common.db import create_engine, session_factory
from ckrv.services.gateway.projection import project_job, project_jobs, record_values
from ckrv.services.gateway.tables import JobRecord
from ckrv.services.stack.nats_server import NatsServer
from ckrv.services.stack.postgres_server import PostgresServer
from tests.integration.gateway.conftest import ClientFactory
from tests.integration.gateway.jobs import job_body

pytestmark = pytest.mark.integration

SERVICE = "service:dispatcher"


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()


async def run_to_success(store: JobEventStore, job_id: UUID) -> None:
    """Drive a job the way the dispatcher, watcher and artifact service will."""
    for command in (
        QueueJob(actor=SERVICE),
        DispatchJob(actor=SERVICE, runner=RunnerBackend.LOCAL),
        StartJob(actor="service:watcher", attempt=1),
        ChangePhase(actor="service:log-relay", attempt=1, phase="executing"),
        SucceedJob(
            actor="service:artifacts",
            result=JobSucceededData(
                attempt=1, summary="Added the page.", files_changed=("a.py",), metrics={"s": 3}
            ),
        ),
    ):
        await store.execute(job_id, functools.partial(decide, command=command))


async def table_snapshot(dsn: str) -> list[dict[str, Any]]:
    engine = create_engine(dsn)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(text("select * from jobs order by id"))
            return [dict(row._mapping) for row in rows]
    finally:
        await engine.dispose()


async def wait_for_status(client: httpx.Client, job_id: str, status: str) -> dict[str, Any]:
    for _ in range(200):
        job: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
        if job["status"] == status:
            return job
        await asyncio.sleep(0.025)
    raise AssertionError(f"job {job_id} never became {status}")


async def test_the_projector_shows_a_job_run_to_success(client: httpx.Client, nc: Client) -> None:
    job_id = client.post("/jobs", json=job_body()).json()["id"]
    await run_to_success(JobEventStore(nc), UUID(job_id))
    job = await wait_for_status(client, job_id, "succeeded")
    assert job["result_status"] == "succeeded"
    assert job["result_summary"] == "Added the page."
    assert job["metrics"] == {"s": 3}
    assert job["attempt"] == 1
    assert job["started_at"] is not None
    assert job["completed_at"] is not None
    assert job["elapsed_seconds"] is not None


async def test_deliveries_out_of_order_or_twice_fold_to_the_full_history(
    nc: Client, postgres_server: PostgresServer, client: httpx.Client
) -> None:
    job_id = UUID(client.post("/jobs", json=job_body()).json()["id"])
    store = JobEventStore(nc)
    await run_to_success(store, job_id)
    history = await store.read(job_id)
    expected: JobState = fold(job_id, [stored.event for stored in history])

    engine = create_engine(postgres_server.dsn)
    try:
        sessions = session_factory(engine)
        async with sessions() as session, session.begin():
            row = await session.get(JobRecord, job_id, with_for_update=True)
            assert row is not None
            # Forget everything but the submission, then deliver the news out of order.
            row.last_sequence = 0
            row.state = record_values(fold(job_id, [history[0].event]), 0)["state"]
        for sequence in (history[3].sequence, history[1].sequence, history[-1].sequence):
            async with sessions() as session, session.begin():
                await project_job(session, nc, job_id, sequence)
        async with sessions() as session:
            row = await session.get(JobRecord, job_id)
        assert row is not None
        assert row.last_sequence == history[-1].sequence
        assert JobState.model_validate(row.state) == expected
        assert row.status == "succeeded"
    finally:
        await engine.dispose()


async def test_rebuild_from_the_stream_gives_an_identical_table(
    client_for: ClientFactory,
    nc: Client,
    nats_server: NatsServer,
    postgres_server: PostgresServer,
) -> None:
    client = client_for("pro")
    store = JobEventStore(nc)
    ids = [client.post("/jobs", json=job_body()).json()["id"] for _ in range(4)]
    await run_to_success(store, UUID(ids[0]))
    client.post(f"/jobs/{ids[1]}/cancel")
    await wait_for_status(client, ids[0], "succeeded")

    before = await table_snapshot(postgres_server.dsn)
    assert {str(row["id"]) for row in before} >= set(ids)
    environment = os.environ | {
        "CKRV_ENV": "dev",
        "CKRV_NATS_URL": nats_server.url,
        "CKRV_DATABASE_URL": postgres_server.dsn,
    }
    rebuilt = subprocess.run(
        [sys.executable, "-m", "ckrv.services.operator", "projections", "rebuild"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "rebuilt" in rebuilt.stdout
    after = await table_snapshot(postgres_server.dsn)
    assert after == before


def test_an_unknown_job_id_is_not_found(client: httpx.Client) -> None:
    assert client.get(f"/jobs/{uuid4()}").status_code == 404


async def test_a_row_made_at_acceptance_takes_its_submission_without_reading_the_stream(
    nc: Client, nats_server: NatsServer, postgres_server: PostgresServer, client: httpx.Client
) -> None:
    job_id = UUID(client.post("/jobs", json=job_body()).json()["id"])
    (submitted,) = await JobEventStore(nc).read(job_id)
    expected = record_values(fold(job_id, [submitted.event]), submitted.sequence)
    # A client that cannot reach JOBS: any history read would fail.
    offline = await nats.connect(nats_server.url)
    await offline.close()

    engine = create_engine(postgres_server.dsn)
    try:
        sessions = session_factory(engine)

        async def project_submission(through: Client) -> dict[str, Any]:
            async with sessions() as session, session.begin():
                await project_jobs(
                    session, through, {job_id: submitted.sequence}, {job_id: submitted}
                )
            async with sessions() as session:
                row = await session.get(JobRecord, job_id)
            assert row is not None
            return {name: getattr(row, name) for name in expected}

        async with sessions() as session, session.begin():
            row = await session.get(JobRecord, job_id, with_for_update=True)
            assert row is not None
            row.last_sequence = 0  # as written at acceptance
        assert await project_submission(offline) == expected

        # Without that row, the history is read and folded: the same row again.
        async with sessions() as session, session.begin():
            await session.execute(text("delete from jobs where id = :id"), {"id": job_id})
        with pytest.raises(nats.errors.ConnectionClosedError):
            await project_submission(offline)
        assert await project_submission(nc) == expected
    finally:
        await engine.dispose()
