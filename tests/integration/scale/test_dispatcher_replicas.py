"""Two dispatchers at once: moments the scale test cannot aim at, made to happen in order.

The stack's own dispatcher is stopped; two dispatchers in the test's process play
the replicas, one of them held inside the workload's creation by its runner.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
from sqlalchemy import select
from sqlmodel import col

from ckrv.events.catalog import JobLost, JobRetried, RunnerBackend, workload_name
from ckrv.events.consumer import Delivery
from ckrv.events.envelope import utc_now
from ckrv.events.state import DispatchJob
from ckrv.services.common.event_service import Connections
from ckrv.services.dispatcher.admission import Admission
from ckrv.services.runners.base import Workload, WorkloadRequest, WorkloadState, WorkloadStatus
from ckrv.services.runners.local import LocalRunner
from ckrv.services.stack.seaweed_server import SeaweedServer
from ckrv.services.watcher.observations import decide_all, lost
from tests.integration.execution.conftest import (
    Execution,
    add_pat,
    dispatcher_in_process,
    in_process,
    submit,
    wait_for,
)
from tests.integration.gateway.lifecycle import SERVICE, drive

pytestmark = pytest.mark.integration


class HeldInCreate(LocalRunner):
    """A runner that stops inside `create`, before the workload exists, until `resume`."""

    def __init__(self, root: Path, **options: Any) -> None:
        super().__init__(root, **options)
        self.creating = asyncio.Event()
        self.resume = asyncio.Event()

    async def create(self, request: WorkloadRequest) -> Workload:
        self.creating.set()
        await self.resume.wait()
        return await super().create(request)


@asynccontextmanager
async def without_the_stack_dispatcher(
    execution: Execution, s3: SeaweedServer
) -> AsyncIterator[Connections]:
    """The stack's dispatcher stopped for the block; connections for the test's own."""
    dispatcher = execution.services["dispatcher"]
    await dispatcher.stop()
    try:
        async with in_process(execution, s3) as connections:
            yield connections
    finally:
        await dispatcher.start()


async def admission_rows(connections: Connections, job_id: UUID) -> list[tuple[int, str]]:
    async with connections.sessions() as session:
        rows = await session.scalars(select(Admission).where(col(Admission.job_id) == job_id))
        return [(row.attempt, row.state) for row in rows]


async def workload_states(execution: Execution, job_id: UUID) -> list[WorkloadState]:
    async with execution.runner() as runner:
        return [status.state for status in await runner.list() if status.job_id == job_id]


def new_job(client: httpx.Client, execution: Execution, script: list[str]) -> UUID:
    credential = add_pat(client, execution.git.token)
    return submit(client, execution.repository(), script, credential=credential)


async def test_a_dispatch_in_progress_is_left_to_the_replica_that_started_it(
    execution: Execution, s3_server: SeaweedServer
) -> None:
    with execution.client() as client:
        async with without_the_stack_dispatcher(execution, s3_server) as connections:
            job_id = new_job(client, execution, ["echo once > ONCE.md"])
            held = execution.runner(HeldInCreate)
            first = dispatcher_in_process(execution, connections, held)
            second = dispatcher_in_process(execution, connections, execution.runner())
            await first.enqueue(job_id)
            admitting = asyncio.create_task(first.admit())
            await held.creating.wait()

            assert await second.admit() == 0

            held.resume.set()
            assert await admitting == 1
        job = await asyncio.to_thread(wait_for, client, job_id)
    assert job["status"] == "succeeded", job["error_message"]
    assert await workload_states(execution, job_id) == [WorkloadState.SUCCEEDED]


async def test_a_late_loss_of_an_attempt_leaves_the_place_of_its_retry(
    execution: Execution, s3_server: SeaweedServer
) -> None:
    with execution.client() as client:
        async with without_the_stack_dispatcher(execution, s3_server) as connections:
            job_id = new_job(client, execution, ["echo again > AGAIN.md"])
            first = dispatcher_in_process(execution, connections, execution.runner())
            second = dispatcher_in_process(execution, connections, execution.runner())
            await first.enqueue(job_id)
            # Dispatched, then its workload found gone: the watcher records the loss and a retry.
            await drive(
                connections.store, job_id, DispatchJob(actor=SERVICE, runner=RunnerBackend.LOCAL)
            )
            gone = WorkloadStatus(
                name=workload_name(job_id, 1),
                job_id=job_id,
                attempt=1,
                state=WorkloadState.GONE,
                created_at=utc_now(),
            )
            await connections.store.execute(
                job_id, lambda state: decide_all(state, lost(gone, "gone", utc_now()))
            )
            deliveries = {
                type(stored.event): Delivery(
                    stored.event, stored.event.subject, stored.sequence, num_delivered=1
                )
                for stored in await connections.store.read(job_id)
            }

            # Each replica gets one of the two events; the retry is handled first.
            await second.handle(deliveries[JobRetried])
            await first.handle(deliveries[JobLost])

            assert await admission_rows(connections, job_id) == [(2, "queued")]
        job = await asyncio.to_thread(wait_for, client, job_id)
    assert job["status"] == "succeeded", job["error_message"]
    assert job["attempt"] == 2


async def test_a_job_cancelled_while_its_workload_is_made_does_not_run(
    execution: Execution, s3_server: SeaweedServer
) -> None:
    with execution.client() as client:
        async with without_the_stack_dispatcher(execution, s3_server) as connections:
            job_id = new_job(client, execution, ["sleep 60"])
            held = execution.runner(HeldInCreate)
            making = dispatcher_in_process(execution, connections, held)
            cancelling = dispatcher_in_process(execution, connections, execution.runner())
            await making.enqueue(job_id)
            admitting = asyncio.create_task(making.admit())
            await held.creating.wait()
            response = await asyncio.to_thread(client.post, f"/jobs/{job_id}/cancel")
            assert response.status_code == 202, response.text
            # The other replica handles the cancel while no workload exists to stop.
            await cancelling.cancel(job_id)

            held.resume.set()
            await admitting

            assert await workload_states(execution, job_id) == [WorkloadState.FAILED]
            assert await admission_rows(connections, job_id) == []
        job = await asyncio.to_thread(wait_for, client, job_id)
    assert job["status"] == "cancelled"
