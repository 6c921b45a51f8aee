"""Jobs run end to end: submitted through the API, dispatched, run by `ckrv-worker`, watched."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import tempfile
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from ckrv.services.runners.base import WorkloadStatus
from ckrv.services.stack.seaweed_server import SeaweedServer
from tests.git_servers import GitSshServer, create_sample_repository
from tests.integration.execution.conftest import (
    Execution,
    add_pat,
    event_types,
    submit,
    wait_for,
)

pytestmark = pytest.mark.integration

RESULT_NAMES = ("result.json", "diff.patch", "repo.bundle")


def stored(s3: SeaweedServer, key: str) -> bytes:
    response = s3.client().get_object(s3.bucket, key)
    try:
        return response.read()
    finally:
        response.close()
        response.release_conn()


def test_a_job_runs_and_its_results_are_stored(
    execution: Execution, s3_server: SeaweedServer
) -> None:
    sample = create_sample_repository(execution.repositories, f"limits-{uuid4().hex[:8]}")
    with execution.client() as client:
        credential = add_pat(client, execution.git.token)
        job_id = submit(
            client,
            execution.git.url_for(sample.path),
            ["echo 'rate limiter' > LIMITS.md"],
            credential=credential,
        )
        job = wait_for(client, job_id)
        assert job["status"] == "succeeded", job["error_message"]
        assert job["result_summary"]
        assert job["started_at"] is not None
        assert job["completed_at"] is not None
        events = client.get(f"/jobs/{job_id}/events").json()["events"]
        (stored_credential,) = client.get("/credentials").json()["credentials"]
        credential_used = stored_credential["last_used_at"] is not None
    # Each result is verified and recorded before the job's end is.
    assert decisions_and_results(events) == [
        "job.submitted",
        "job.queued",
        "job.dispatched",
        "result.json",
        "diff.patch",
        "repo.bundle",
        "job.succeeded",
    ]
    artifacts = [
        event["data"]
        for event in events
        if event["type"] == "job.artifact-stored" and event["data"]["name"] in RESULT_NAMES
    ]
    for artifact in artifacts:
        content = stored(s3_server, artifact["key"])
        assert artifact["key"] == f"jobs/{job_id}/1/{artifact['name']}"
        assert (artifact["size_bytes"], artifact["sha256"]) == (
            len(content),
            hashlib.sha256(content).hexdigest(),
        )
    diff = stored(s3_server, f"jobs/{job_id}/1/diff.patch").decode()
    assert "+rate limiter" in diff
    assert diff.count("diff --git") == 1
    with tempfile.TemporaryDirectory() as folder:
        bundle = Path(folder) / "repo.bundle"
        bundle.write_bytes(stored(s3_server, f"jobs/{job_id}/1/repo.bundle"))
        clone = Path(folder) / "clone"
        branch = f"ckrv/{job_id.hex[:8]}"
        git("clone", "--quiet", str(sample.path), str(clone))
        git("-C", str(clone), "fetch", "--quiet", str(bundle), f"{branch}:{branch}")
        git("-C", str(clone), "checkout", "--quiet", branch)
        assert (clone / "LIMITS.md").read_text() == "rate limiter\n"
        assert git("-C", str(clone), "rev-parse", "main~0") == sample.head
    assert credential_used


def decisions_and_results(events: list[dict[str, Any]]) -> list[str]:
    """The job's events by type, its results by name, leaving out what follows the workload's
    output on its own time: `started` or the first phase (whichever comes first), the phases,
    the log archive."""
    return [
        event["data"]["name"] if event["type"] == "job.artifact-stored" else event["type"]
        for event in events
        if event["type"] not in {"job.started", "job.phase-changed"}
        and event["data"].get("name") != "logs.jsonl"
    ]


def git(*arguments: str) -> str:
    return subprocess.run(
        ["git", *arguments], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_a_deploy_key_clones_over_ssh(
    execution: Execution, git_ssh_server: GitSshServer, git_repositories: Path
) -> None:
    sample = create_sample_repository(git_repositories, f"ssh-{uuid4().hex[:8]}")
    with execution.client() as client:
        response = client.post(
            "/credentials",
            json={
                "name": "deploy-key",
                "provider": "generic",
                "credential_type": "deploy_key",
                "value": git_ssh_server.deploy_key,
            },
        )
        assert response.status_code == 201, response.text
        job_id = submit(
            client,
            git_ssh_server.url_for(sample.path),
            ["echo ssh > SSH.md"],
            credential="deploy-key",
        )
        job = wait_for(client, job_id)
    assert job["status"] == "succeeded", job["error_message"]


def test_a_wrong_token_fails_the_job_with_a_clone_error(execution: Execution) -> None:
    with execution.client() as client:
        credential = add_pat(client, "ckrv_pat_not-the-right-one")
        job_id = submit(client, execution.repository(), ["true"], credential=credential)
        job = wait_for(client, job_id)
    assert job["status"] == "failed"
    assert "clone" in job["error_message"].lower()
    assert "ckrv_pat_not-the-right-one" not in job["error_message"]


def test_a_missing_branch_fails_the_job(execution: Execution) -> None:
    with execution.client() as client:
        credential = add_pat(client, execution.git.token)
        job_id = submit(
            client, execution.repository(), ["true"], credential=credential, base_branch="nope"
        )
        job = wait_for(client, job_id)
    assert job["status"] == "failed"
    assert "nope" in job["error_message"]


def test_a_cancelled_job_stops_its_workload(execution: Execution) -> None:
    with execution.client() as client:
        credential = add_pat(client, execution.git.token)
        job_id = submit(client, execution.repository(), ["sleep 120"], credential=credential)
        wait_for(client, job_id, {"running"})
        assert client.post(f"/jobs/{job_id}/cancel").status_code == 202
        job = wait_for(client, job_id)
        types = event_types(client, job_id)
    assert job["status"] == "cancelled"
    assert "job.cancelled" in types
    workloads = [status for status in execution_statuses(execution) if status.job_id == job_id]
    assert [status.state.value for status in workloads] == ["failed"]
    assert not sleeping_processes()


def execution_statuses(execution: Execution) -> list[WorkloadStatus]:
    async def statuses() -> list[WorkloadStatus]:
        async with execution.runner() as runner:
            return await runner.list()

    return asyncio.run(statuses())


def sleeping_processes() -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if command.strip() == "sleep 120":
                found.append(entry.name)
    return found
