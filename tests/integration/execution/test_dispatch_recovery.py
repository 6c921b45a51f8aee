"""A dispatcher that dies mid-dispatch: its successor finishes the job, with one workload."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from uuid import UUID

import pytest

from ckrv.services.runners.base import Workload, WorkloadRequest
from ckrv.services.runners.local import LocalRunner
from ckrv.services.stack.seaweed_server import SeaweedServer
from tests.integration.execution.conftest import (
    Execution,
    add_pat,
    dispatcher_in_process,
    in_process,
    submit,
    wait_for,
)

pytestmark = pytest.mark.integration


class DiesAfterCreating(LocalRunner):
    """A runner whose process dies right after the workload exists, before anything else."""

    async def create(self, request: WorkloadRequest) -> Workload:
        await super().create(request)
        raise asyncio.CancelledError("the dispatcher died here")


async def workload_counts(execution: Execution) -> Counter[UUID]:
    async with execution.runner() as runner:
        return Counter(status.job_id for status in await runner.list())


async def crashed_dispatch(execution: Execution, s3: SeaweedServer, job_id: UUID) -> None:
    """What a dispatcher does for `job_id` up to creating its workload, where it dies."""
    runner = execution.runner(DiesAfterCreating)
    async with in_process(execution, s3) as connections:
        dispatcher = dispatcher_in_process(execution, connections, runner)
        await dispatcher.enqueue(job_id)
        with pytest.raises(asyncio.CancelledError):
            await dispatcher.admit()


async def test_a_restarted_dispatcher_finds_the_workload_its_predecessor_made(
    execution: Execution, s3_server: SeaweedServer
) -> None:
    dispatcher = execution.services["dispatcher"]
    with execution.client() as client:
        credential = add_pat(client, execution.git.token)
        await dispatcher.stop()
        try:
            job_id = submit(
                client, execution.repository(), ["echo once > ONCE.md"], credential=credential
            )
            await crashed_dispatch(execution, s3_server, job_id)
            assert (await workload_counts(execution))[job_id] == 1
        finally:
            await dispatcher.start()
        job = await asyncio.to_thread(wait_for, client, job_id)
    assert job["status"] == "succeeded", job["error_message"]
    assert (await workload_counts(execution))[job_id] == 1


async def test_a_dispatcher_killed_at_any_moment_leaves_one_workload_per_job(
    execution: Execution,
) -> None:
    dispatcher = execution.services["dispatcher"]
    with execution.client("enterprise") as client:
        credential = add_pat(client, execution.git.token)
        repository = execution.repository()
        job_ids = [
            submit(client, repository, [f"echo {n} > N.md"], credential=credential)
            for n in range(8)
        ]
        # Mid-dispatch: some jobs claimed, some workloads created, some not yet.
        time.sleep(0.3)
        assert dispatcher.process is not None
        assert dispatcher.process.pid is not None
        os.killpg(dispatcher.process.pid, signal.SIGKILL)
        await dispatcher.stop()
        await dispatcher.start()
        jobs = [await asyncio.to_thread(wait_for, client, job_id) for job_id in job_ids]
    assert [job["status"] for job in jobs] == ["succeeded"] * len(job_ids), [
        job["error_message"] for job in jobs
    ]
    counts = await workload_counts(execution)
    assert [counts[job_id] for job_id in job_ids] == [1] * len(job_ids)
