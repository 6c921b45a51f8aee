"""The watcher's reconcile: a workload that never starts is a lost attempt, run again."""

from __future__ import annotations

import asyncio

import pytest

from ckrv.services.runners.base import Workload, WorkloadRequest, WorkloadState
from ckrv.services.runners.local import LocalRunner
from ckrv.services.stack.seaweed_server import SeaweedServer
from ckrv.services.watcher.service import Watcher
from ckrv.services.watcher.settings import WatcherSettings
from tests.integration.execution.conftest import (
    Execution,
    add_pat,
    dispatcher_in_process,
    event_types,
    in_process,
    submit,
    wait_for,
)

pytestmark = pytest.mark.integration


class NeverStarts(LocalRunner):
    """A runner that sets a workload up but never starts it (a pod that cannot be scheduled)."""

    async def create(self, request: WorkloadRequest) -> Workload:
        self._make_folder(request, self._folder(request.name))
        status = await self.get(request.name)
        assert status is not None
        return Workload(status, created=True)


async def test_a_workload_that_never_starts_is_lost_and_its_job_runs_again(
    execution: Execution, s3_server: SeaweedServer
) -> None:
    dispatcher = execution.services["dispatcher"]
    with execution.client() as client:
        credential = add_pat(client, execution.git.token)
        await dispatcher.stop()
        try:
            job_id = submit(
                client, execution.repository(), ["echo again > AGAIN.md"], credential=credential
            )
            async with in_process(execution, s3_server) as connections:
                stuck = dispatcher_in_process(execution, connections, execution.runner(NeverStarts))
                await stuck.enqueue(job_id)
                assert await stuck.admit() == 1
                async with execution.runner() as runner:
                    statuses = [s for s in await runner.list() if s.job_id == job_id]
                assert [status.state for status in statuses] == [WorkloadState.PENDING]
                watcher = Watcher(
                    common=connections.common,
                    settings=WatcherSettings(pending_timeout_seconds=0.5),
                    sessions=connections.sessions,
                    store=connections.store,
                    runner=execution.runner(),
                )
                await asyncio.sleep(0.6)
                await watcher.reconcile()
        finally:
            await dispatcher.start()
        job = await asyncio.to_thread(wait_for, client, job_id)
        types = event_types(client, job_id)
        events = client.get(f"/jobs/{job_id}/events").json()["events"]
    assert job["status"] == "succeeded", job["error_message"]
    assert job["attempt"] == 2
    assert types.index("job.lost") < types.index("job.retried") < types.index("job.succeeded")
    (lost,) = [event for event in events if event["type"] == "job.lost"]
    assert "did not start within" in lost["data"]["reason"]
