"""A job's results through the gateway: the list, the diff as text, downloads, expiry, owners.

A gateway of the module's own on the session's NATS, PostgreSQL and SeaweedFS.
Results are put in storage as a workload uploads them and recorded with
`job.artifact-stored` as the artifacts service records them; jobs are moved by
appending their events as the other services do.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID, uuid4

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from ckrv.events.catalog import JobArtifactStoredData, RunnerBackend
from ckrv.events.state import (
    DispatchJob,
    ExpireResults,
    FailJob,
    MarkLost,
    QueueJob,
    RecordArtifact,
    RetryJob,
    StartJob,
)
from ckrv.events.store import JobEventStore
from ckrv.services.common.storage import artifact_key
from ckrv.services.stack.nats_server import NatsServer
from ckrv.services.stack.postgres_server import PostgresServer
from ckrv.services.stack.seaweed_server import SeaweedServer
from tests.integration.gateway.jobs import job_body
from tests.integration.gateway.lifecycle import SERVICE, drive, start, succeed
from tests.running_gateway import RunningGateway, started_gateway

pytestmark = pytest.mark.integration

DIFF = b"diff --git a/LIMITS.md b/LIMITS.md\nnew file mode 100644\n--- /dev/null\n+++ b/LIMITS.md\n"


@pytest.fixture(scope="module")
async def results_gateway(
    nats_server: NatsServer, postgres_server: PostgresServer, s3_server: SeaweedServer
) -> AsyncIterator[RunningGateway]:
    switches = {
        "CKRV_S3_ENDPOINT": s3_server.endpoint,
        "CKRV_S3_ACCESS_KEY": s3_server.access_key,
        "CKRV_S3_SECRET_KEY": s3_server.secret_key,
        "CKRV_S3_REGION": s3_server.region,
        "CKRV_S3_BUCKET": s3_server.bucket,
    }
    async with started_gateway(
        nats_url=nats_server.url, database_url=postgres_server.dsn, switches=switches
    ) as gateway:
        yield gateway


@pytest.fixture
async def client(results_gateway: RunningGateway) -> AsyncIterator[httpx.AsyncClient]:
    async with user_client(results_gateway) as client:
        yield client


def user_client(gateway: RunningGateway, token: str | None = None) -> httpx.AsyncClient:
    """A client of a new user, or of the user whose token is given."""
    token = token or new_user_token(gateway)
    return httpx.AsyncClient(
        base_url=gateway.api_url, headers={"Authorization": f"Bearer {token}"}, timeout=10
    )


def new_user_token(gateway: RunningGateway) -> str:
    return gateway.token(f"results-{uuid4().hex[:12]}@example.com")


async def new_job(client: httpx.AsyncClient) -> UUID:
    response = await client.post("/jobs", json=job_body())
    assert response.status_code == 201, response.text
    return UUID(response.json()["id"])


async def store_result(
    store: JobEventStore,
    s3: SeaweedServer,
    job_id: UUID,
    name: str,
    content: bytes,
    *,
    attempt: int = 1,
    upload: bool = True,
) -> JobArtifactStoredData:
    """Upload `content` as the workload does and record it as the artifacts service does."""
    key = artifact_key(job_id, attempt, name)
    if upload:
        await asyncio.to_thread(
            s3.client().put_object, s3.bucket, key, io.BytesIO(content), len(content)
        )
    artifact = JobArtifactStoredData(
        attempt=attempt,
        name=name,
        key=key,
        size_bytes=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
    )
    await drive(store, job_id, RecordArtifact(actor=SERVICE, artifact=artifact))
    return artifact


async def succeeded_job(
    client: httpx.AsyncClient,
    store: JobEventStore,
    s3: SeaweedServer,
    *,
    at: datetime | None = None,
) -> tuple[UUID, dict[str, bytes]]:
    """A job that stored a diff, a bundle and its result.json, then succeeded."""
    job_id = await new_job(client)
    await start(store, job_id)
    contents = {
        "diff.patch": DIFF,
        "repo.bundle": os.urandom(4096),
        "result.json": b'{"summary": "Added LIMITS.md."}',
    }
    for name, content in contents.items():
        await store_result(store, s3, job_id, name, content)
    await succeed(store, job_id, at=at)
    return job_id, contents


async def test_results_are_downloadable_the_moment_the_job_succeeded(
    client: httpx.AsyncClient, store: JobEventStore, s3_server: SeaweedServer
) -> None:
    job_id, contents = await succeeded_job(client, store, s3_server)

    # No waiting for the read model: the requests follow the terminal event at once.
    diff = await client.get(f"/jobs/{job_id}/artifacts/diff")
    assert diff.status_code == 200, diff.text
    assert diff.headers["content-type"].startswith("text/plain")
    assert diff.content == DIFF

    listed = await client.get(f"/jobs/{job_id}/artifacts")
    assert listed.status_code == 200, listed.text
    artifacts = listed.json()["artifacts"]
    assert [(artifact["name"], artifact["size"], artifact["sha256"]) for artifact in artifacts] == [
        (name, len(content), hashlib.sha256(content).hexdigest())
        for name, content in sorted(contents.items())
    ]
    job = (await client.get(f"/jobs/{job_id}")).json()
    completed_at = datetime.fromisoformat(job["completed_at"])
    assert {datetime.fromisoformat(artifact["expires_at"]) for artifact in artifacts} == {
        completed_at + timedelta(days=7)
    }

    redirect = await client.get(f"/jobs/{job_id}/artifacts/repo.bundle")
    assert redirect.status_code == 302, redirect.text
    assert redirect.headers["cache-control"] == "no-store"
    location = redirect.headers["location"]
    assert f"jobs/{job_id}/1/repo.bundle" in location
    # The URL itself is the proof: no token goes with it.
    async with httpx.AsyncClient(timeout=10) as anonymous:
        downloaded = await anonymous.get(location)
    assert downloaded.status_code == 200
    assert downloaded.content == contents["repo.bundle"]


async def test_results_do_not_wait_for_the_read_model(
    client: httpx.AsyncClient, store: JobEventStore, s3_server: SeaweedServer, database: AsyncEngine
) -> None:
    job_id = await new_job(client)
    await start(store, job_id)
    await store_result(store, s3_server, job_id, "diff.patch", DIFF)
    before_the_end = await read_model_row(database, job_id)
    await succeed(store, job_id)
    await wait_for_status(client, job_id, "succeeded")
    projected = await read_model_row(database, job_id)
    # The read model as it was before the job's end, as if the projector were behind.
    await write_read_model_row(database, job_id, before_the_end)
    try:
        response = await client.get(f"/jobs/{job_id}/artifacts/diff")
    finally:
        # The table is the session's: other tests (the projection rebuild) compare it.
        await write_read_model_row(database, job_id, projected)
    assert response.status_code == 200, response.text
    assert response.content == DIFF


async def write_read_model_row(database: AsyncEngine, job_id: UUID, row: dict[str, object]) -> None:
    async with database.begin() as connection:
        await connection.execute(
            text("update jobs set state = :state, last_sequence = :last_sequence where id = :id"),
            {**row, "id": job_id},
        )


async def read_model_row(database: AsyncEngine, job_id: UUID) -> dict[str, object]:
    async with database.connect() as connection:
        row = (
            await connection.execute(
                text("select state, last_sequence from jobs where id = :id"), {"id": job_id}
            )
        ).one()
    return {"state": json.dumps(row.state), "last_sequence": row.last_sequence}


async def wait_for_status(client: httpx.AsyncClient, job_id: UUID, status: str) -> None:
    async with asyncio.timeout(10):
        while True:
            if (await client.get(f"/jobs/{job_id}")).json()["status"] == status:
                return
            await asyncio.sleep(0.01)


async def test_another_users_job_has_no_results_to_see(
    client: httpx.AsyncClient,
    results_gateway: RunningGateway,
    store: JobEventStore,
    s3_server: SeaweedServer,
) -> None:
    job_id, _ = await succeeded_job(client, store, s3_server)
    async with user_client(results_gateway) as stranger:
        for path in ("artifacts", "artifacts/diff", "artifacts/repo.bundle"):
            response = await stranger.get(f"/jobs/{job_id}/{path}")
            assert response.status_code == 404, path
            assert response.json()["error"] == "not_found"
            assert "location" not in response.headers


async def test_a_running_job_has_no_results_yet(
    client: httpx.AsyncClient, store: JobEventStore, s3_server: SeaweedServer
) -> None:
    job_id = await new_job(client)
    await start(store, job_id)
    await store_result(store, s3_server, job_id, "diff.patch", DIFF)

    listed = (await client.get(f"/jobs/{job_id}/artifacts")).json()["artifacts"]
    assert [(artifact["name"], artifact["expires_at"]) for artifact in listed] == [
        ("diff.patch", None)
    ]
    # What is stored can be read; what is not yet there waits for the job's end.
    assert (await client.get(f"/jobs/{job_id}/artifacts/diff.patch")).status_code == 302
    response = await client.get(f"/jobs/{job_id}/artifacts/repo.bundle")
    assert response.status_code == 409
    assert response.json()["error"] == "job_not_finished"
    assert response.json()["status"] == "running"


async def test_a_failed_job_has_no_successful_output(
    client: httpx.AsyncClient, store: JobEventStore
) -> None:
    job_id = await new_job(client)
    await start(store, job_id)
    failure = FailJob(
        actor=SERVICE, attempt=1, error_code="agent_failed", error_message="the agent gave up"
    )
    await drive(store, job_id, failure)

    response = await client.get(f"/jobs/{job_id}/artifacts/diff")
    assert response.status_code == 409
    body = response.json()
    assert body["error"] == "no_successful_output"
    assert body["status"] == "failed"
    assert body["error_message"] == "the agent gave up"
    assert body["message"] == (
        f"job {job_id} failed: the agent gave up; it has no successful output"
    )
    listed = await client.get(f"/jobs/{job_id}/artifacts")
    assert listed.json() == {"artifacts": []}


async def test_expired_results_are_gone_with_the_time_they_expired(
    client: httpx.AsyncClient, store: JobEventStore, s3_server: SeaweedServer
) -> None:
    job_id, _ = await succeeded_job(client, store, s3_server)
    expired_at = datetime.now(UTC).replace(microsecond=0)
    await drive(store, job_id, ExpireResults(actor=SERVICE, expired_at=expired_at))

    for path in ("artifacts", "artifacts/diff", "artifacts/repo.bundle"):
        response = await client.get(f"/jobs/{job_id}/{path}")
        assert response.status_code == 410, path
        body = response.json()
        assert body["error"] == "gone"
        assert datetime.fromisoformat(body["expired_at"]) == expired_at
        assert str(job_id) in body["message"]


async def test_results_past_their_retention_are_gone_before_the_janitor_comes(
    client: httpx.AsyncClient, store: JobEventStore, s3_server: SeaweedServer
) -> None:
    ended = datetime.now(UTC) - timedelta(days=7, minutes=1)
    job_id, _ = await succeeded_job(client, store, s3_server, at=ended)

    response = await client.get(f"/jobs/{job_id}/artifacts/diff")
    assert response.status_code == 410
    assert datetime.fromisoformat(response.json()["expired_at"]) == ended + timedelta(days=7)


async def test_unknown_results_are_not_found_and_odd_names_refused(
    client: httpx.AsyncClient, store: JobEventStore, s3_server: SeaweedServer
) -> None:
    job_id, _ = await succeeded_job(client, store, s3_server)

    unknown = await client.get(f"/jobs/{job_id}/artifacts/notes.txt")
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "not_found"
    odd = await client.get(f"/jobs/{job_id}/artifacts/.hidden")
    assert odd.status_code == 422
    assert odd.json()["error"] == "validation_error"


async def test_only_the_final_attempts_results_count(
    client: httpx.AsyncClient, store: JobEventStore, s3_server: SeaweedServer
) -> None:
    job_id = await new_job(client)
    await start(store, job_id)
    await store_result(store, s3_server, job_id, "diff.patch", b"lost attempt\n")
    await drive(
        store,
        job_id,
        MarkLost(actor=SERVICE, attempt=1, reason="node lost"),
        RetryJob(actor=SERVICE, attempt=1),
        QueueJob(actor=SERVICE),
        DispatchJob(actor=SERVICE, runner=RunnerBackend.LOCAL),
        StartJob(actor=SERVICE, attempt=2),
    )
    await store_result(store, s3_server, job_id, "diff.patch", DIFF, attempt=2)
    await succeed(store, job_id, attempt=2)

    listed = (await client.get(f"/jobs/{job_id}/artifacts")).json()["artifacts"]
    assert [(artifact["name"], artifact["size"]) for artifact in listed] == [
        ("diff.patch", len(DIFF))
    ]
    assert (await client.get(f"/jobs/{job_id}/artifacts/diff")).content == DIFF


async def test_a_recorded_result_missing_from_storage_is_a_service_error(
    client: httpx.AsyncClient, store: JobEventStore, s3_server: SeaweedServer
) -> None:
    job_id = await new_job(client)
    await start(store, job_id)
    await store_result(store, s3_server, job_id, "diff.patch", DIFF, upload=False)
    await succeed(store, job_id)

    response = await client.get(f"/jobs/{job_id}/artifacts/diff")
    assert response.status_code == 500
    assert response.json()["error"] == "artifact_missing"


async def test_pull_refuses_a_download_that_is_not_what_was_stored(
    results_gateway: RunningGateway,
    store: JobEventStore,
    s3_server: SeaweedServer,
    tmp_path: Path,
) -> None:
    token = new_user_token(results_gateway)
    async with user_client(results_gateway, token) as client:
        job_id = await new_job(client)
    await start(store, job_id)
    result = {"base_commit": "0" * 40, "head_commit": "1" * 40, "feature_branch": "ckrv/x"}
    await store_result(store, s3_server, job_id, "result.json", json.dumps(result).encode())
    recorded = await store_result(store, s3_server, job_id, "repo.bundle", b"the stored bundle")
    # Storage now holds other bytes than the ones recorded: a damaged copy.
    await asyncio.to_thread(
        s3_server.client().put_object, s3_server.bucket, recorded.key, io.BytesIO(b"x"), 1
    )
    await succeed(store, job_id)
    subprocess.run(["git", "init", "--quiet", str(tmp_path)], check=True)

    environment = {
        name: value for name, value in os.environ.items() if not name.startswith("CKRV_")
    } | {"CKRV_API_URL": results_gateway.api_url, "CKRV_TOKEN": token}
    pulled = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "ckrv.cli.app", "pull", str(job_id)],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )

    assert pulled.returncode == 2, pulled.stderr
    assert f"repo.bundle of job {job_id} arrived damaged: 1 bytes" in pulled.stderr
    assert recorded.sha256 in pulled.stderr
    assert (
        subprocess.run(
            ["git", "branch", "--list"], cwd=tmp_path, capture_output=True, text=True, check=True
        ).stdout
        == ""
    )
