"""What only the local runner promises: workloads outlive their creator, the sandbox, limits."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from uuid import uuid4

import pytest

from ckrv.services.runners.base import FailureReason, WorkloadRequest, WorkloadState
from ckrv.services.runners.local import LocalRunner
from ckrv.services.runners.local_folder import WorkloadFolder
from ckrv.services.runners.sandbox import find_bubblewrap
from ckrv.services.runners.settings import SandboxMode
from tests.processes import processes_mentioning
from tests.runner_contract import (
    PATIENCE_SECONDS,
    Gate,
    finished,
    output_of,
    python_request,
    running,
)

pytestmark = pytest.mark.integration

needs_bubblewrap = pytest.mark.skipif(
    find_bubblewrap() is None, reason="bubblewrap is missing or cannot create namespaces here"
)
SANDBOX_MODES = [
    pytest.param(SandboxMode.REQUIRED, marks=needs_bubblewrap, id="sandboxed"),
    pytest.param(SandboxMode.OFF, id="plain"),
]

CREATOR = """
import asyncio, sys
from pathlib import Path
from ckrv.services.runners.base import WorkloadRequest
from ckrv.services.runners.local import LocalRunner
from ckrv.services.runners.settings import SandboxMode

async def create():
    runner = LocalRunner(Path(sys.argv[1]), sandbox=SandboxMode(sys.argv[3]))
    workload = await runner.create(WorkloadRequest.model_validate_json(sys.argv[2]))
    print(workload.name, flush=True)
    await asyncio.sleep(600)

asyncio.run(create())
"""


@pytest.fixture(params=SANDBOX_MODES)
async def runner(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LocalRunner]:
    local = LocalRunner(tmp_path / "runner", sandbox=request.param)
    yield local
    await local.collect_garbage(names=[status.name for status in await local.list()])


async def gone(marker: str) -> None:
    """Return once no process mentions `marker`; killed processes take a moment to end."""
    async with asyncio.timeout(PATIENCE_SECONDS):
        while processes_mentioning(marker):  # noqa: ASYNC110 - /proc offers nothing to await
            await asyncio.sleep(0.02)


async def test_a_workload_outlives_its_creator_and_is_seen_from_other_processes(
    runner: LocalRunner,
) -> None:
    async with Gate() as gate:
        request = python_request(gate.wait_code())
        creator = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CREATOR,
            str(runner.root),
            request.model_dump_json(),
            SandboxMode.REQUIRED if runner.sandboxed else SandboxMode.OFF,
            stdout=asyncio.subprocess.PIPE,
        )
        assert creator.stdout is not None
        async with asyncio.timeout(PATIENCE_SECONDS):
            created_name = (await creator.stdout.readline()).decode().strip()
        assert created_name == request.name
        await gate.arrival()
        creator.kill()
        await creator.wait()

        # This process never created anything: it sees the workload through the folder alone.
        observer = LocalRunner(runner.root, sandbox=SandboxMode.OFF)
        assert (await running(observer, request.name)).job_id == request.job_id
        await gate.open()
        status = await finished(observer, request.name)
    assert (status.state, status.exit_code) == (WorkloadState.SUCCEEDED, 0)


async def test_a_killed_supervisor_is_reported_lost_and_takes_the_command_along(
    runner: LocalRunner,
) -> None:
    marker = uuid4().hex
    async with Gate() as gate:
        request = python_request(gate.wait_code(), marker)
        await runner.create(request)
        await gate.arrival()
        supervisor = WorkloadFolder(runner.root / request.name).read_status().supervisor_pid
        assert supervisor is not None
        os.kill(supervisor, signal.SIGKILL)

        status = await finished(runner, request.name)
        await gone(marker)
    assert status.state is WorkloadState.FAILED
    assert status.reason is FailureReason.LOST
    assert await runner.get(request.name) == status  # the loss is recorded, not re-derived


async def test_a_workload_whose_creator_died_before_starting_it_starts_on_the_next_create(
    runner: LocalRunner,
) -> None:
    request = python_request("print('ran')")
    # What a creator that died right after writing the folder leaves behind.
    runner._make_folder(request, runner._folder(request.name))
    waiting = await runner.get(request.name)
    assert waiting is not None
    assert waiting.state is WorkloadState.PENDING

    workload = await runner.create(request)
    assert not workload.created
    status = await finished(runner, request.name)
    assert status.state is WorkloadState.SUCCEEDED
    assert await output_of(runner, request.name) == b"ran\n"


async def test_a_workload_stopped_before_it_started_never_runs(runner: LocalRunner) -> None:
    request = python_request("print('ran')")
    runner._make_folder(request, runner._folder(request.name))

    await runner.stop(request.name, grace_seconds=5)
    await runner.create(request)

    status = await runner.get(request.name)
    assert status is not None
    assert (status.state, status.reason) == (WorkloadState.FAILED, FailureReason.STOPPED)
    assert (status.started_at, status.exit_code) == (None, None)
    assert await output_of(runner, request.name) == b""
    assert not WorkloadFolder(runner.root / request.name).input_dir.exists()


async def test_a_missing_program_is_a_start_error(runner: LocalRunner) -> None:
    request = WorkloadRequest(
        job_id=uuid4(), attempt=1, command=("ckrv-no-such-program", "run"), time_limit_seconds=60
    )
    await runner.create(request)
    status = await finished(runner, request.name)
    assert (status.state, status.reason) == (WorkloadState.FAILED, FailureReason.START_ERROR)
    assert status.message is not None
    assert "ckrv-no-such-program" in status.message
    assert status.started_at is None


async def test_a_memory_limit_makes_larger_allocations_fail(runner: LocalRunner) -> None:
    limit = 256 * 2**20
    allocate = "import sys; data = bytearray(int(sys.argv[1])); print('allocated', flush=True)"
    small = python_request(allocate, str(limit // 4), memory_limit_bytes=limit)
    large = python_request(allocate, str(limit * 2), memory_limit_bytes=limit)
    for request in (small, large):
        await runner.create(request)

    assert (await finished(runner, small.name)).state is WorkloadState.SUCCEEDED
    failed = await finished(runner, large.name)
    assert (failed.state, failed.reason, failed.exit_code) == (
        WorkloadState.FAILED,
        FailureReason.ERROR,
        1,
    )
    assert failed.message is not None
    assert str(limit) in failed.message
    assert b"MemoryError" in await output_of(runner, large.name)


async def test_the_runners_environment_does_not_reach_workloads(
    runner: LocalRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CKRV_DATABASE_URL", "postgresql://ckrv:secret@127.0.0.1/ckrv")
    request = python_request(
        "import json, os; print(json.dumps(dict(os.environ)))", env={"PATH": "/usr/bin:/bin"}
    )
    await runner.create(request)
    await finished(runner, request.name)
    environment = json.loads(await output_of(runner, request.name))
    folder = WorkloadFolder(runner.root / request.name)
    assert "CKRV_DATABASE_URL" not in environment
    assert environment["PATH"] == "/usr/bin:/bin"
    assert environment["HOME"] == str(folder.workspace_dir)
    assert environment["CKRV_INPUT_DIR"] == str(folder.input_dir)
    assert environment["CKRV_WORKSPACE"] == str(folder.workspace_dir)


SANDBOX_PROBE = """
import json, os, pathlib, sys

def attempt(action):
    try:
        action()
        return "allowed"
    except OSError as error:
        return type(error).__name__

root = pathlib.Path(sys.argv[1])
print(json.dumps({
    "write_tmp": attempt(lambda: pathlib.Path("/tmp/" + sys.argv[2]).write_text("x")),
    "write_usr": attempt(lambda: pathlib.Path("/usr/ckrv-probe").write_text("x")),
    "write_workspace": attempt(lambda: pathlib.Path("probe").write_text("x")),
    "write_input": attempt(
        lambda: pathlib.Path(os.environ["CKRV_INPUT_DIR"], "probe").write_text("x")
    ),
    "shared": sorted(os.listdir(root.parent)),
    "runner_root": sorted(os.listdir(root)),
    "own_folder": sorted(os.listdir(pathlib.Path.home().parent)),
    "capabilities": [line for line in open("/proc/self/status") if line.startswith("CapEff")],
    "pid": os.getpid(),
}))
"""


@pytest.fixture
def shared_folder() -> Iterator[Path]:
    """A folder outside /tmp, which every sandbox replaces with a private one."""
    path = Path(tempfile.mkdtemp(prefix="ckrv-test-", dir="/var/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@needs_bubblewrap
async def test_the_sandbox_shows_a_workload_only_the_system_and_its_own_folder(
    shared_folder: Path,
) -> None:
    (shared_folder / "notes.txt").write_text("shared")
    # The runner's folder inside a folder workloads may read: they still must not see it.
    runner = LocalRunner(
        shared_folder / "runner",
        sandbox=SandboxMode.REQUIRED,
        sandbox_read_only_paths=[shared_folder],
    )
    tmp_marker = f"ckrv-probe-{uuid4().hex}"
    async with Gate() as gate:
        neighbour = python_request(gate.wait_code(), input_files={"credential": b"s3cret"})
        await runner.create(neighbour)
        probe = python_request(SANDBOX_PROBE, str(runner.root), tmp_marker)
        await runner.create(probe)
        status = await finished(runner, probe.name)
        output = await output_of(runner, probe.name)
        await gate.open()
    assert status.state is WorkloadState.SUCCEEDED, output
    seen = json.loads(output)
    assert seen["write_tmp"] == "allowed"
    assert not (Path("/tmp") / tmp_marker).exists()  # its /tmp was its own
    assert seen["write_usr"] == "OSError"  # read-only file system
    assert seen["write_workspace"] == "allowed"
    assert seen["write_input"] == "OSError"
    assert seen["shared"] == ["notes.txt", "runner"]
    # Of the runner's folder it sees its own workload's folder, and of that only two parts.
    assert seen["runner_root"] == [probe.name]
    assert seen["own_folder"] == ["input", "workspace"]
    assert seen["capabilities"] == ["CapEff:\t0000000000000000\n"]
    assert seen["pid"] == 2  # in a process namespace of its own, after bubblewrap's init
