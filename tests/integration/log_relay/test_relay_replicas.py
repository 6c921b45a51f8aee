"""Two `ckrv-cloud serve log-relay` replicas over one runner: they share the jobs, and whichever
one stops, is killed or pauses, every line is published once and every log archived once."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from uuid import uuid4

import pytest
from nats.aio.client import Client
from sqlalchemy import select
from sqlmodel import col

from ckrv.services.common.db import create_engine, session_factory
from ckrv.services.common.settings import CommonSettings
from ckrv.services.log_relay.leases import RelayLease, RelayReplica
from ckrv.services.runners.base import Workload
from ckrv.services.runners.local import LocalRunner
from ckrv.services.runners.local_folder import WorkloadFolder
from ckrv.services.stack.seaweed_server import SeaweedServer
from ckrv.services.stack.service_process import ServiceProcess
from tests.integration.log_relay.conftest import (
    entries_of,
    metric,
    output_lines,
    process_id,
    published,
    python_workload,
    relay_process,
    wait_for_archive,
    wait_until,
)

pytestmark = pytest.mark.integration

JOBS = 10
ENTRIES = "ckrv_log_relay_entries_total"
ARCHIVES = "ckrv_log_relay_archives_total"
LEASED = "ckrv_log_relay_jobs_leased"
# Short, so that a replica's jobs are taken over soon after it dies; long enough for a
# replica that is alive to renew its leases in time on a busy machine.
LEASE_TTL_SECONDS = 4
# Longer than any wait of these tests: what is taken over before it ran out was given back.
LONG_LEASE_TTL_SECONDS = 120

# Numbered lines, one every 20 ms, until the test leaves a file `stop` in the workload's folder.
UNTIL_STOPPED = """
import os, time
n = 0
while not os.path.exists("stop"):
    n += 1
    print(f"line {n}", flush=True)
    time.sleep(0.02)
print("stopped", flush=True)
"""
FIRST_HALF = 50
# Fifty lines at once, then fifty more once the test leaves a file `go` in the workload's folder.
IN_TWO_HALVES = f"""
import os, time
for n in range(1, {FIRST_HALF} + 1):
    print(f"line {{n}}", flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
for n in range({FIRST_HALF} + 1, {2 * FIRST_HALF} + 1):
    print(f"line {{n}}", flush=True)
"""


@asynccontextmanager
async def two_relays(
    environment: dict[str, str], log_dir: Path, *, lease_ttl_seconds: float
) -> AsyncIterator[tuple[ServiceProcess, ServiceProcess]]:
    relays = (
        relay_process(environment, log_dir / "first", lease_ttl_seconds=lease_ttl_seconds),
        relay_process(environment, log_dir / "second", lease_ttl_seconds=lease_ttl_seconds),
    )
    try:
        await asyncio.gather(*(relay.start() for relay in relays))
        yield relays
    finally:
        await asyncio.gather(*(relay.stop() for relay in relays))


@asynccontextmanager
async def local_runner(root: Path) -> AsyncIterator[LocalRunner]:
    async with LocalRunner(root) as runner:
        try:
            yield runner
        finally:
            await asyncio.gather(*(runner.delete(status.name) for status in await runner.list()))


async def start_jobs(runner: LocalRunner, script: str) -> list[Workload]:
    return [await runner.create(python_workload(uuid4(), script)) for _ in range(JOBS)]


def leave_file(runner: LocalRunner, workloads: list[Workload], name: str) -> None:
    """Put an empty file `name` in each workload's working folder."""
    for workload in workloads:
        (WorkloadFolder(runner.root / workload.name).workspace_dir / name).touch()


async def until_following_every_job(relay: ServiceProcess, which: str) -> None:
    """Wait until `relay` holds the lease of every job."""

    async def following_every_job() -> bool:
        return await metric(relay, LEASED) == JOBS

    await wait_until(following_every_job, f"the {which} relay following every job")


async def both_working(relays: tuple[ServiceProcess, ServiceProcess]) -> bool:
    """Whether each relay has jobs leased and has published some of their lines."""
    for relay in relays:
        if await metric(relay, LEASED) == 0 or await metric(relay, ENTRIES) == 0:
            return False
    return True


async def assert_published_once(
    nc: Client, s3: SeaweedServer, runner: LocalRunner, workloads: list[Workload]
) -> None:
    """Each job's log, on the stream and in its archive, is its workload's output, line by line."""
    for workload in workloads:
        archive = await wait_for_archive(s3, workload.status.job_id)
        messages = await published(nc, workload.status.job_id)
        entries = entries_of(messages)
        assert [entry.message for entry in entries] == await output_lines(runner, workload.name)
        assert [entry.seq for entry in entries] == list(range(1, len(entries) + 1))
        assert archive == b"".join(message + b"\n" for message in messages)


async def test_replicas_share_the_jobs_and_one_that_stops_hands_its_jobs_over_at_once(
    *,
    relay_environment: dict[str, str],
    runner_root: Path,
    common: CommonSettings,
    s3_server: SeaweedServer,
    nc: Client,
    tmp_path: Path,
) -> None:
    async with (
        local_runner(runner_root) as runner,
        two_relays(relay_environment, tmp_path, lease_ttl_seconds=LONG_LEASE_TTL_SECONDS) as (
            stopping,
            staying,
        ),
    ):
        workloads = await start_jobs(runner, UNTIL_STOPPED)
        await wait_until(lambda: both_working((stopping, staying)), "both relays at work")
        assert await metric(stopping, ARCHIVES) == 0
        await stopping.stop()

        engine = create_engine(common.database_url.get_secret_value())
        try:
            async with session_factory(engine)() as session:
                replicas = set((await session.scalars(select(col(RelayReplica.name)))).all())
                owners = set((await session.scalars(select(col(RelayLease.owner)))).all())
        finally:
            await engine.dispose()
        assert len(replicas) == 1, "the stopped relay said it is gone"
        assert owners <= replicas, "the stopped relay gave its leases back"

        await until_following_every_job(staying, "other")
        leave_file(runner, workloads, "stop")
        await assert_published_once(nc, s3_server, runner, workloads)
        assert await metric(staying, ARCHIVES) == JOBS


async def test_the_jobs_of_a_killed_replica_are_taken_over_without_loss_or_repeat(
    *,
    relay_environment: dict[str, str],
    runner_root: Path,
    s3_server: SeaweedServer,
    nc: Client,
    tmp_path: Path,
) -> None:
    async with (
        local_runner(runner_root) as runner,
        two_relays(relay_environment, tmp_path, lease_ttl_seconds=LEASE_TTL_SECONDS) as (
            killed,
            surviving,
        ),
    ):
        workloads = await start_jobs(runner, UNTIL_STOPPED)
        await wait_until(lambda: both_working((killed, surviving)), "both relays at work")
        # Mid-stream: the workloads write on until told to stop.
        os.killpg(process_id(killed), signal.SIGKILL)

        await until_following_every_job(surviving, "surviving")
        leave_file(runner, workloads, "stop")
        await assert_published_once(nc, s3_server, runner, workloads)
        assert await metric(surviving, ARCHIVES) == JOBS


async def test_a_replica_paused_past_its_leases_publishes_nothing_once_it_goes_on(
    *,
    relay_environment: dict[str, str],
    runner_root: Path,
    s3_server: SeaweedServer,
    nc: Client,
    tmp_path: Path,
) -> None:
    async with (
        local_runner(runner_root) as runner,
        two_relays(relay_environment, tmp_path, lease_ttl_seconds=LEASE_TTL_SECONDS) as (
            paused,
            other,
        ),
    ):
        workloads = await start_jobs(runner, IN_TWO_HALVES)

        async def first_halves_published() -> bool:
            for workload in workloads:
                if len(await published(nc, workload.status.job_id)) < FIRST_HALF:
                    return False
            # Counted by the relays too, once they are done with them.
            counted = [await metric(relay, ENTRIES) for relay in (paused, other)]
            return sum(counted) >= JOBS * FIRST_HALF and await both_working((paused, other))

        await wait_until(first_halves_published, "the first half of each job's lines published")
        # Idle now, with nothing in flight: anything it publishes from here on is too much.
        published_before = await metric(paused, ENTRIES)
        os.killpg(process_id(paused), signal.SIGSTOP)
        try:
            await until_following_every_job(other, "other")
            # The paused relay's followers find the second halves when it goes on.
            leave_file(runner, workloads, "go")
        finally:
            os.killpg(process_id(paused), signal.SIGCONT)
        await assert_published_once(nc, s3_server, runner, workloads)
        assert await metric(paused, ENTRIES) == published_before
        assert await metric(paused, ARCHIVES) == 0
        assert await metric(other, ARCHIVES) == JOBS
