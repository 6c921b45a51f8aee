"""Admission holds jobs over the owner's limit in the queue; a lost workload is retried."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from datetime import datetime
from uuid import UUID

import httpx
import pytest

from ckrv.events.catalog import workload_name
from ckrv.services.runners.local_folder import WorkloadFolder
from tests.integration.execution.conftest import (
    Execution,
    add_pat,
    assert_succeeded,
    event_types,
    submit,
    wait_for,
)

pytestmark = pytest.mark.integration


def occurred(client: httpx.Client, job_id: UUID, event_type: str) -> datetime:
    events = client.get(f"/jobs/{job_id}/events").json()["events"]
    (at,) = [event["occurred_at"] for event in events if event["type"] == event_type]
    return datetime.fromisoformat(at)


def test_a_job_over_the_limit_waits_until_a_place_is_free(execution: Execution) -> None:
    # The free tier runs one job at a time.
    with execution.client("free") as client:
        credential = add_pat(client, execution.git.token)
        repository = execution.repository()
        first = submit(client, repository, ["sleep 2", "echo a > A.md"], credential=credential)
        second = submit(client, repository, ["echo b > B.md"], credential=credential)
        wait_for(client, first, {"running"})
        waiting = client.get(f"/jobs/{second}").json()
        assert waiting["status"] == "pending"
        assert waiting["phase"] == "queued"
        assert "job.dispatched" not in event_types(client, second)
        assert_succeeded(wait_for(client, first))
        assert_succeeded(wait_for(client, second))
        assert occurred(client, second, "job.dispatched") >= occurred(
            client, first, "job.succeeded"
        )


def test_a_lost_workload_is_run_again_as_the_next_attempt(execution: Execution) -> None:
    with execution.client() as client:
        credential = add_pat(client, execution.git.token)
        job_id = submit(client, execution.repository(), ["sleep 60"], credential=credential)
        wait_for(client, job_id, {"running"})
        folder = WorkloadFolder(execution.runner_root / workload_name(job_id, 1))
        supervisor = folder.read_status().supervisor_pid
        assert supervisor is not None
        # What a machine restart does to a workload: its supervisor is gone without a word.
        os.kill(supervisor, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while (job := client.get(f"/jobs/{job_id}").json())["attempt"] < 2 or job[
            "status"
        ] != "running":
            assert time.monotonic() < deadline, job
            time.sleep(0.1)
        types = event_types(client, job_id)
        assert types.index("job.lost") < types.index("job.retried")
        assert types.count("job.dispatched") == 2
        assert (execution.runner_root / workload_name(job_id, 2)).is_dir()
        # The second attempt would sleep its minute too; cancelling ends it.
        client.post(f"/jobs/{job_id}/cancel")
        assert wait_for(client, job_id)["status"] == "cancelled"


def test_a_queued_job_is_cancelled_without_ever_running(execution: Execution) -> None:
    with execution.client("free") as client:
        credential = add_pat(client, execution.git.token)
        repository = execution.repository()
        first = submit(client, repository, ["sleep 2"], credential=credential)
        queued = submit(client, repository, ["echo never > NEVER.md"], credential=credential)
        wait_for(client, first, {"running"})
        assert client.post(f"/jobs/{queued}/cancel").status_code == 202
        assert wait_for(client, queued)["status"] == "cancelled"
        assert "job.dispatched" not in event_types(client, queued)
        assert_succeeded(wait_for(client, first))
    assert not (execution.runner_root / workload_name(queued, 1)).exists()


def test_a_deleted_workload_is_lost_and_retried(execution: Execution) -> None:
    with execution.client() as client:
        credential = add_pat(client, execution.git.token)
        job_id = submit(client, execution.repository(), ["sleep 60"], credential=credential)
        wait_for(client, job_id, {"running"})
        asyncio.run(delete_workload(execution, workload_name(job_id, 1)))
        deadline = time.monotonic() + 60
        while "job.retried" not in (types := event_types(client, job_id)):
            assert time.monotonic() < deadline, types
            time.sleep(0.1)
        client.post(f"/jobs/{job_id}/cancel")
        assert wait_for(client, job_id)["status"] == "cancelled"
    assert "job.lost" in types


async def delete_workload(execution: Execution, name: str) -> None:
    async with execution.runner() as runner:
        await runner.delete(name)
