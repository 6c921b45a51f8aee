"""The simulated kubelet: a program's image runs as that coroutine, other images as processes
whose signals never reach another process."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

import pytest

from ckrv.services.runners.base import INPUT_DIR_ENV, WorkloadState
from tests.kubelet import PodLog, SimulatedCluster, cluster
from tests.processes import leader_states_at_group_kills
from tests.runner_contract import finished, output_of, python_request, running

pytestmark = pytest.mark.integration
__all__ = ["cluster"]


async def test_a_program_runs_instead_of_the_command(cluster: SimulatedCluster) -> None:
    inputs: list[bytes] = []

    async def program(env: Mapping[str, str], log: PodLog) -> int:
        inputs.append((Path(env[INPUT_DIR_ENV]) / "job.json").read_bytes())
        await log.add(b"hello from the program\n")
        return 3

    cluster.kubelet.programs["tests/program:1"] = program
    async with cluster.runner(kubernetes_image="tests/program:1") as runner:
        request = python_request("print('the command ran')", input_files={"job.json": b"{}"})
        await runner.create(request)
        status = await finished(runner, request.name)
        output = await output_of(runner, request.name)
        await runner.delete(request.name)
    assert (status.state, status.exit_code) == (WorkloadState.FAILED, 3)
    assert output == b"hello from the program\n"
    assert inputs == [b"{}"]


async def test_a_stopped_program_is_cancelled(cluster: SimulatedCluster) -> None:
    cancelled = asyncio.Event()

    async def program(env: Mapping[str, str], log: PodLog) -> int:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return 0

    cluster.kubelet.programs["tests/program:2"] = program
    async with cluster.runner(kubernetes_image="tests/program:2") as runner:
        request = python_request("pass")
        await runner.create(request)
        await running(runner, request.name)
        await runner.stop(request.name, grace_seconds=30)
        remaining = await runner.get(request.name)
    assert cancelled.is_set()
    assert remaining is None


async def test_a_container_process_group_is_killed_only_while_its_pid_is_still_its_own(
    cluster: SimulatedCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    leader_states = leader_states_at_group_kills(monkeypatch)
    async with cluster.runner() as runner:
        request = python_request("print('done')")
        await runner.create(request)
        status = await finished(runner, request.name)
        # Deleting the finished pod kills its container again, long after the process ended.
        await runner.delete(request.name)
        await cluster.kubelet.idle()
    assert status.state is WorkloadState.SUCCEEDED
    assert leader_states
    assert "reaped" not in leader_states
