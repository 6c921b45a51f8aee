"""The contract every runner backend passes: subclass `RunnerContract`, give it `backend_runner`.

Workloads are small Python programs run by this interpreter, so a backend must
really run their commands (a Kubernetes emulator's simulated kubelet runs them as
local processes). A workload that has to wait blocks on a `Gate`, a loopback
socket the test opens when it is ready, so no test depends on timing; the time
limits below are only there to fail a broken backend instead of hanging.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from types import TracebackType
from typing import Any
from uuid import uuid4

import pytest

from ckrv.events.catalog import workload_name
from ckrv.services.runners.base import (
    INPUT_DIR_ENV,
    WORKSPACE_DIR_ENV,
    FailureReason,
    OutputChunk,
    Runner,
    WorkloadNotFound,
    WorkloadRequest,
    WorkloadState,
    WorkloadStatus,
)
from ckrv.services.stack.ports import free_ports
from tests.processes import processes_mentioning

PATIENCE_SECONDS = 30.0
_POLL_SECONDS = 0.02
_STATE_ORDER = [
    WorkloadState.PENDING,
    WorkloadState.RUNNING,
    WorkloadState.SUCCEEDED,
    WorkloadState.FAILED,
    WorkloadState.GONE,
]


class Gate:
    """A loopback server that workloads connect to and then wait on until the test opens it."""

    def __init__(self) -> None:
        (self.port,) = free_ports(1)
        self.arrivals = 0
        self._arrived = asyncio.Condition()
        self._waiting: list[asyncio.StreamWriter] = []
        self._open = False
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Gate:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for writer in self._waiting:
            writer.close()
        assert self._server is not None
        self._server.close()

    async def _accept(self, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._waiting.append(writer)
        if self._open:
            writer.write(b"o")
        async with self._arrived:
            self.arrivals += 1
            self._arrived.notify_all()

    def wait_code(self) -> str:
        """Python statements that connect to the gate and block until it opens."""
        return (
            "import socket as _s\n"
            f"_gate = _s.create_connection(('127.0.0.1', {self.port}))\n"
            "_gate.recv(1)\n"
        )

    async def arrival(self, count: int = 1) -> None:
        """Return once `count` workloads have connected in all."""
        async with asyncio.timeout(PATIENCE_SECONDS), self._arrived:
            await self._arrived.wait_for(lambda: self.arrivals >= count)

    async def open(self) -> None:
        """Let every waiting workload, and any that connects later, go on."""
        self._open = True
        for writer in self._waiting:
            writer.write(b"o")
            await writer.drain()


def python_request(code: str, *arguments: str, **fields: Any) -> WorkloadRequest:
    """A request running `code` with this interpreter, by default for attempt 1 of a new job."""
    defaults: dict[str, Any] = {"job_id": uuid4(), "attempt": 1, "time_limit_seconds": 120}
    return WorkloadRequest(**defaults | fields, command=(sys.executable, "-c", code, *arguments))


async def wait_for_status(
    runner: Runner, name: str, condition: Callable[[WorkloadStatus | None], bool]
) -> WorkloadStatus | None:
    status = await runner.get(name)
    async with asyncio.timeout(PATIENCE_SECONDS):
        while not condition(status):
            await asyncio.sleep(_POLL_SECONDS)
            status = await runner.get(name)
    return status


async def finished(runner: Runner, name: str) -> WorkloadStatus:
    status = await wait_for_status(runner, name, lambda s: s is not None and s.is_finished)
    assert status is not None
    return status


async def running(runner: Runner, name: str) -> WorkloadStatus:
    status = await wait_for_status(
        runner, name, lambda s: s is not None and s.state is not WorkloadState.PENDING
    )
    assert status is not None
    assert status.state is WorkloadState.RUNNING, status
    return status


async def output_of(runner: Runner, name: str, offset: int = 0, *, follow: bool = False) -> bytes:
    """The output from `offset`, checking that the chunks follow each other exactly."""
    chunks: list[OutputChunk] = []
    async with asyncio.timeout(PATIENCE_SECONDS):
        async for chunk in runner.read_output(name, offset, follow=follow):
            assert chunk.offset == (chunks[-1].end if chunks else offset)
            assert chunk.data
            chunks.append(chunk)
    return b"".join(chunk.data for chunk in chunks)


class RunnerContract:
    """Tests any backend must pass. A subclass provides `backend_runner`: an empty runner
    of its own for each test, whose workloads the `runner` fixture deletes afterwards; and
    `input_files_present`, which tells whether a workload's secret input files are still
    kept where the backend keeps them."""

    input_file_forbidden_modes = 0o077
    """Permissions input files must not grant. Kubernetes lets the pod's own group (its
    fsGroup, which only the workload's user is in) read a Secret's files: 0o037 there."""

    @pytest.fixture
    def backend_runner(self) -> Runner:
        raise NotImplementedError("a backend's test class provides the runner")

    @pytest.fixture
    def input_files_present(self, backend_runner: Runner) -> Callable[[str], bool]:
        raise NotImplementedError("a backend's test class tells where it keeps input files")

    @pytest.fixture
    async def runner(self, backend_runner: Runner) -> AsyncIterator[Runner]:
        yield backend_runner
        for status in await backend_runner.list():
            await backend_runner.delete(status.name)

    async def test_a_workload_runs_to_success(self, runner: Runner) -> None:
        async with Gate() as gate:
            request = python_request(gate.wait_code())
            workload = await runner.create(request)
            assert workload.created
            assert workload.name == request.name
            assert (workload.status.job_id, workload.status.attempt) == (request.job_id, 1)
            assert workload.status.state in {WorkloadState.PENDING, WorkloadState.RUNNING}

            await gate.arrival()
            status = await running(runner, request.name)
            assert status.started_at is not None
            assert status.finished_at is None
            await gate.open()

            status = await finished(runner, request.name)
        assert status.state is WorkloadState.SUCCEEDED
        assert (status.exit_code, status.reason) == (0, None)
        assert status.started_at is not None
        assert status.finished_at is not None
        assert status.created_at <= status.started_at <= status.finished_at

    async def test_a_non_zero_exit_fails_with_its_code(self, runner: Runner) -> None:
        request = python_request("import sys; sys.exit(3)")
        await runner.create(request)
        status = await finished(runner, request.name)
        assert status.state is WorkloadState.FAILED
        assert (status.exit_code, status.reason) == (3, FailureReason.ERROR)

    async def test_creating_twice_runs_one_workload(self, runner: Runner) -> None:
        async with Gate() as gate:
            request = python_request(gate.wait_code())
            first, second = await asyncio.gather(runner.create(request), runner.create(request))
            assert sorted([first.created, second.created]) == [False, True]
            assert first.name == second.name == request.name
            await gate.arrival()
            await gate.open()
            await finished(runner, request.name)

            # A retry after the end finds the finished workload and starts nothing.
            again = await runner.create(request)
            assert not again.created
            assert again.status.state is WorkloadState.SUCCEEDED
            assert gate.arrivals == 1
        assert [status.name for status in await runner.list()] == [request.name]

    async def test_stop_terminates_then_kills_the_whole_tree(self, runner: Runner) -> None:
        marker = uuid4().hex
        async with Gate() as ready, Gate() as terminated:
            # The workload notes SIGTERM and ignores it, its child and grandchild just ignore
            # it, so only SIGKILL ends them; they carry the marker in their arguments, to be
            # found among all processes.
            grandchild = (
                "import signal, time\n"
                "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                f"{ready.wait_code()}time.sleep(600)\n"
            )
            child = (
                "import signal, subprocess, sys, time\n"
                "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                f"subprocess.Popen([sys.executable, '-c', {grandchild!r}, sys.argv[1]])\n"
                "time.sleep(600)\n"
            )
            code = (
                "import signal, socket, subprocess, sys, time\n"
                "def noted(*_):\n"
                f"    socket.create_connection(('127.0.0.1', {terminated.port})).close()\n"
                "signal.signal(signal.SIGTERM, noted)\n"
                f"subprocess.Popen([sys.executable, '-c', {child!r}, sys.argv[1]])\n"
                "while True: time.sleep(600)\n"
            )
            request = python_request(code, marker)
            await runner.create(request)
            await ready.arrival()
            assert len(processes_mentioning(marker)) >= 3

            await runner.stop(request.name, grace_seconds=0.5)

            await terminated.arrival()
            assert processes_mentioning(marker) == set()
            status = await runner.get(request.name)
            if status is not None:  # some backends delete a stopped workload
                assert status.state is WorkloadState.FAILED
                assert status.reason is FailureReason.STOPPED

    async def test_stop_is_idempotent(self, runner: Runner) -> None:
        await runner.stop(workload_name(uuid4(), 1), grace_seconds=1)

        done = python_request("print('done')")
        await runner.create(done)
        ended = await finished(runner, done.name)
        await runner.stop(done.name, grace_seconds=1)
        assert await runner.get(done.name) == ended

        async with Gate() as gate:
            waiting = python_request(gate.wait_code())
            await runner.create(waiting)
            await gate.arrival()
            await runner.stop(waiting.name, grace_seconds=5)
            stopped = await runner.get(waiting.name)
            await runner.stop(waiting.name, grace_seconds=5)
            assert await runner.get(waiting.name) == stopped

    async def test_the_time_limit_stops_a_workload(self, runner: Runner) -> None:
        async with Gate() as gate:
            request = python_request(gate.wait_code(), time_limit_seconds=1, grace_seconds=0.2)
            await runner.create(request)
            await gate.arrival()
            status = await finished(runner, request.name)
        assert status.state is WorkloadState.FAILED
        assert status.reason is FailureReason.DEADLINE_EXCEEDED
        assert status.started_at is not None
        assert status.finished_at is not None
        assert status.finished_at - status.started_at >= timedelta(seconds=1)

    async def test_output_is_read_from_any_offset_and_followed_to_the_end(
        self, runner: Runner
    ) -> None:
        lines = "".join(f"line {number}\n" for number in range(2000)).encode()
        async with Gate() as gate:
            code = (
                "import sys\n"
                "for number in range(2000):\n"
                "    print(f'line {number}', file=sys.stderr if number % 2 else sys.stdout)\n"
                "sys.stdout.flush()\n"
                f"{gate.wait_code()}"
                "print('end', flush=True)\n"
            )
            # Unbuffered stderr and flushed stdout keep the lines in order.
            request = python_request(code, env={"PYTHONUNBUFFERED": "1"})
            await runner.create(request)
            follower = asyncio.create_task(output_of(runner, request.name, follow=True))
            await gate.arrival()

            assert await output_of(runner, request.name) == lines
            middle = len(lines) // 2 + 3
            assert await output_of(runner, request.name, middle) == lines[middle:]
            assert not follower.done()

            await gate.open()
            assert await follower == lines + b"end\n"
        await finished(runner, request.name)
        assert await output_of(runner, request.name, len(lines), follow=True) == b"end\n"

    async def test_inputs_and_workspace_are_found_through_the_environment(
        self, runner: Runner
    ) -> None:
        code = (
            "import json, os, stat\n"
            f"folder = os.environ[{INPUT_DIR_ENV!r}]\n"
            f"workspace = os.environ[{WORKSPACE_DIR_ENV!r}]\n"
            "with open(os.path.join(workspace, 'scratch'), 'w') as scratch:\n"
            "    scratch.write('written')\n"
            "print(json.dumps({\n"
            "    'files': {n: open(os.path.join(folder, n)).read() for n in os.listdir(folder)},\n"
            "    'modes': [stat.S_IMODE(os.stat(os.path.join(folder, n)).st_mode)\n"
            "              for n in os.listdir(folder)],\n"
            "    'greeting': os.environ['GREETING'],\n"
            "    'in_workspace': os.path.samefile(os.getcwd(), workspace),\n"
            "}))\n"
        )
        files = {"spec.md": b"# Spec\n", "credential": b"s3cret", "upload-urls.json": b"{}"}
        request = python_request(code, input_files=files, env={"GREETING": "hello"})
        await runner.create(request)
        status = await finished(runner, request.name)
        assert status.state is WorkloadState.SUCCEEDED, await output_of(runner, request.name)
        seen = json.loads(await output_of(runner, request.name))
        assert seen["files"] == {name: content.decode() for name, content in files.items()}
        assert all(mode & self.input_file_forbidden_modes == 0 for mode in seen["modes"])
        assert seen["greeting"] == "hello"
        assert seen["in_workspace"]

    async def test_released_inputs_are_gone_and_the_workload_stays(
        self, runner: Runner, input_files_present: Callable[[str], bool]
    ) -> None:
        files = {"credential": b"s3cret"}
        done = python_request("print('done')", input_files=files)
        await runner.create(done)
        ended = await finished(runner, done.name)
        async with Gate() as gate:
            waiting = python_request(f"{gate.wait_code()}print('after')", input_files=files)
            await runner.create(waiting)
            await gate.arrival()
            assert input_files_present(waiting.name)

            # Twice over, and for a workload that never was: no errors.
            for name in (done.name, waiting.name, done.name, workload_name(uuid4(), 1)):
                await runner.release_input(name)

            assert not input_files_present(done.name)
            assert not input_files_present(waiting.name)
            assert await runner.get(done.name) == ended
            assert await output_of(runner, done.name) == b"done\n"
            # A workload already running goes on with what it read.
            await gate.open()
            status = await finished(runner, waiting.name)
        assert status.state is WorkloadState.SUCCEEDED
        assert await output_of(runner, waiting.name) == b"after\n"

    async def test_list_shows_every_workload(self, runner: Runner) -> None:
        first = python_request("pass")
        second = python_request("pass", attempt=2)
        for request in (first, second):
            await runner.create(request)
        listed = {status.name: status for status in await runner.list()}
        assert set(listed) == {first.name, second.name}
        assert (listed[second.name].job_id, listed[second.name].attempt) == (second.job_id, 2)

    async def test_watch_reports_each_change_until_the_workload_is_gone(
        self, runner: Runner
    ) -> None:
        async with Gate() as gate:
            request = python_request(gate.wait_code())
            states: list[WorkloadState] = []
            changed = asyncio.Event()

            async def record() -> None:
                async for status in runner.watch():
                    if status.name == request.name and (not states or states[-1] != status.state):
                        states.append(status.state)
                        changed.set()

            async def seen(state: WorkloadState) -> None:
                async with asyncio.timeout(PATIENCE_SECONDS):
                    while state not in states:
                        changed.clear()
                        await changed.wait()

            watcher = asyncio.create_task(record())
            try:
                await runner.create(request)
                await seen(WorkloadState.RUNNING)
                await gate.open()
                await seen(WorkloadState.SUCCEEDED)
                await runner.delete(request.name)
                await seen(WorkloadState.GONE)
            finally:
                watcher.cancel()
        assert states == sorted(states, key=_STATE_ORDER.index)
        assert states[-3:] == [WorkloadState.RUNNING, WorkloadState.SUCCEEDED, WorkloadState.GONE]

    async def test_garbage_collection_removes_finished_workloads(self, runner: Runner) -> None:
        done = python_request("print('done')", input_files={"credential": b"s3cret"})
        await runner.create(done)
        ended = await finished(runner, done.name)
        assert ended.finished_at is not None
        async with Gate() as gate:
            waiting = python_request(gate.wait_code())
            await runner.create(waiting)
            await gate.arrival()

            assert await runner.collect_garbage(finished_before=ended.finished_at) == []
            later = ended.finished_at + timedelta(microseconds=1)
            assert await runner.collect_garbage(finished_before=later) == [done.name]
            assert await runner.get(done.name) is None
            with pytest.raises(WorkloadNotFound):
                await output_of(runner, done.name)
            assert (await running(runner, waiting.name)).name == waiting.name

            unknown = workload_name(uuid4(), 1)
            removed = await runner.collect_garbage(names=[waiting.name, unknown])
            assert removed == [waiting.name]
        assert await runner.list() == []

    async def test_unknown_workloads_are_absent(self, runner: Runner) -> None:
        unknown = workload_name(uuid4(), 1)
        assert await runner.get(unknown) is None
        with pytest.raises(WorkloadNotFound):
            await output_of(runner, unknown)
        await runner.delete(unknown)
        assert await runner.list() == []
