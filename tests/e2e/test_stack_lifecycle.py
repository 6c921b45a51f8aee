"""The local stack as an operator runs it: start, signal, restart, start fresh, port clashes.

Each test launches `python -m ckrv.services.stack` on free ports and watches the
whole process tree below it through /proc.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest
from minio import Minio

from ckrv.services.stack.launcher import Stack, StackSettings
from tests.processes import (
    ProcessEntry,
    descendants,
    process_tree,
    processes_mentioning,
    survivors,
)
from tests.stack_settings import cli_arguments, free_port_settings

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

READY_TIMEOUT_SECONDS = 90
STOP_LIMIT_SECONDS = 10


@dataclass
class LaunchedStack:
    process: asyncio.subprocess.Process
    settings: StackSettings
    output: Path

    @property
    def stack_file(self) -> Path:
        return self.settings.state_dir / "stack.json"

    def log(self) -> str:
        return self.output.read_text(errors="replace")

    async def ready(self) -> dict[str, Any]:
        """Wait for the ready line and stack.json; the file's contents."""
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while "stack ready" not in self.log() or not self.stack_file.exists():
            if self.process.returncode is not None:
                pytest.fail(f"the stack exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"the stack was not ready in {READY_TIMEOUT_SECONDS} s:\n{self.log()}")
            await asyncio.sleep(0.1)
        stack: dict[str, Any] = json.loads(self.stack_file.read_text())
        return stack

    async def stop(self, signum: signal.Signals = signal.SIGTERM) -> tuple[int, float]:
        """Send `signum`; the exit code and how long the exit took."""
        began = time.monotonic()
        self.process.send_signal(signum)
        code = await asyncio.wait_for(self.process.wait(), STOP_LIMIT_SECONDS * 3)
        return code, time.monotonic() - began


@contextlib.asynccontextmanager
async def launched(settings: StackSettings, *extra: str) -> AsyncIterator[LaunchedStack]:
    output = settings.state_dir.parent / "launcher-output.log"
    with output.open("ab") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ckrv.services.stack",
            *cli_arguments(settings),
            *extra,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=sink,
            stderr=sink,
        )
    stack = LaunchedStack(process, settings, output)
    try:
        yield stack
    finally:
        if process.returncode is None:
            # A failed test must not leave its stack running: kill the tree we started.
            leftovers = process_tree(process.pid)
            for entry in leftovers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(entry.pid, signal.SIGKILL)
            await process.wait()


@pytest.fixture
def settings(server_tmp_path: Path) -> StackSettings:
    return free_port_settings(server_tmp_path / "state")


def program(entry: ProcessEntry) -> str:
    """The file name of the program a process runs (PostgreSQL's helpers rename themselves)."""
    arguments = (Path("/proc") / str(entry.pid) / "cmdline").read_bytes().split(b"\0")
    return Path(arguments[0].decode()).name


def assert_all_gone(tree: set[ProcessEntry], settings: StackSettings) -> None:
    assert survivors(tree) == set()
    assert processes_mentioning(str(settings.state_dir)) == set()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_signal_stops_every_process_within_ten_seconds(
    settings: StackSettings, signum: signal.Signals
) -> None:
    async with launched(settings) as stack:
        endpoints = await stack.ready()
        tree = descendants(stack.process.pid)
        assert {"nats-server", "weed", "postgres"} <= {program(entry) for entry in tree}
        assert set(endpoints["services"]) == set(settings.services)
        assert stack.stack_file.stat().st_mode & 0o777 == 0o600

        code, seconds = await stack.stop(signum)

    assert code == 0, stack.log()
    assert seconds < STOP_LIMIT_SECONDS
    assert_all_gone(tree, settings)
    assert not stack.stack_file.exists()


async def test_a_killed_launcher_takes_its_children_along(settings: StackSettings) -> None:
    async with launched(settings) as stack:
        await stack.ready()
        tree = descendants(stack.process.pid)
        stack.process.kill()
        await stack.process.wait()
        # The kernel kills the servers; PostgreSQL's helpers follow their postmaster.
        for _ in range(50):
            if not survivors(tree):
                break
            await asyncio.sleep(0.1)
    assert_all_gone(tree, settings)
    # A killed weed cannot tidy up after itself; weed replaces them on its next start.
    for socket_path in Stack(settings).s3.unix_sockets():
        socket_path.unlink(missing_ok=True)


async def test_a_crashed_server_takes_the_stack_down_with_a_clear_error(
    settings: StackSettings,
) -> None:
    async with launched(settings) as stack:
        await stack.ready()
        tree = descendants(stack.process.pid)
        (nats_server,) = [entry for entry in tree if program(entry) == "nats-server"]
        os.kill(nats_server.pid, signal.SIGKILL)
        code = await asyncio.wait_for(stack.process.wait(), STOP_LIMIT_SECONDS)
    assert code == 1
    assert f"nats exited unexpectedly with code {-signal.SIGKILL}" in stack.log()
    assert_all_gone(tree, settings)


async def test_a_taken_port_is_named_and_nothing_starts(settings: StackSettings) -> None:
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", settings.postgres_port))
        squatter.listen()
        async with launched(settings) as stack:
            code = await asyncio.wait_for(stack.process.wait(), 30)
    assert code != 0
    assert f"port {settings.postgres_port} (postgres) on 127.0.0.1 is already in use" in stack.log()
    assert "Traceback" not in stack.log()
    assert processes_mentioning(str(settings.state_dir)) == set()


def s3_client(endpoints: dict[str, Any]) -> Minio:
    s3 = endpoints["s3"]
    return Minio(
        endpoint=s3["endpoint"].removeprefix("http://"),
        access_key=s3["access_key"],
        secret_key=s3["secret_key"],
        region=s3["region"],
        secure=False,
    )


async def write_data(endpoints: dict[str, Any]) -> None:
    connection = await asyncpg.connect(endpoints["postgres"]["dsn"])
    try:
        await connection.execute("create table kept (value text)")
        await connection.execute("insert into kept values ('row')")
    finally:
        await connection.close()
    bucket = endpoints["s3"]["bucket"]
    s3_client(endpoints).put_object(
        bucket_name=bucket, object_name="kept.txt", data=io.BytesIO(b"object"), length=6
    )
    client = await nats.connect(endpoints["nats"]["url"])
    try:
        await client.jetstream().publish("jobs.kept.submitted", b"{}")
    finally:
        await client.close()


async def read_data(endpoints: dict[str, Any]) -> dict[str, Any]:
    """What is left of `write_data`'s row, object and event."""
    connection = await asyncpg.connect(endpoints["postgres"]["dsn"])
    try:
        table_exists = await connection.fetchval("select to_regclass('kept') is not null")
        row = await connection.fetchval("select value from kept") if table_exists else None
    finally:
        await connection.close()
    client = s3_client(endpoints)
    bucket = endpoints["s3"]["bucket"]
    stored = None
    if [item.object_name for item in client.list_objects(bucket_name=bucket)] == ["kept.txt"]:
        response = client.get_object(bucket_name=bucket, object_name="kept.txt")
        stored = response.read()
        response.close()
        response.release_conn()
    nc = await nats.connect(endpoints["nats"]["url"])
    try:
        events = (await nc.jetstream().stream_info("JOBS")).state.messages
    finally:
        await nc.close()
    return {"row": row, "object": stored, "events": events}


async def test_a_restart_keeps_the_data_and_fresh_wipes_it(settings: StackSettings) -> None:
    async with launched(settings) as stack:
        first = await stack.ready()
        await write_data(first)
        assert (await stack.stop())[0] == 0

    async with launched(settings) as stack:
        again = await stack.ready()
        assert again["postgres"]["password"] == first["postgres"]["password"]
        assert again["s3"]["secret_key"] == first["s3"]["secret_key"]
        assert await read_data(again) == {"row": "row", "object": b"object", "events": 1}
        assert (await stack.stop())[0] == 0

    async with launched(settings, "--fresh") as stack:
        fresh = await stack.ready()
        assert fresh["postgres"]["password"] != first["postgres"]["password"]
        assert await read_data(fresh) == {"row": None, "object": None, "events": 0}
        assert (await stack.stop())[0] == 0
