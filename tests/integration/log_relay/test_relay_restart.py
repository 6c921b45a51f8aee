"""`ckrv-cloud serve log-relay` killed mid-stream and started again: no line lost, none repeated."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from uuid import uuid4

import pytest
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from ckrv.events.subjects import LOGS_STREAM, job_log_subject
from ckrv.schemas.logs import LogEntry
from ckrv.services.runners.local import LocalRunner
from ckrv.services.stack.seaweed_server import SeaweedServer
from tests.integration.log_relay.conftest import (
    entries_of,
    process_id,
    published,
    python_workload,
    relay_process,
    wait_for_archive,
    wait_until,
)

pytestmark = pytest.mark.integration

LINES = 2000
# About four seconds of output, a line at a time, as an agent writes it.
NUMBERED_LINES = f"""
import time
for n in range(1, {LINES} + 1):
    print(f"line {{n}}", flush=True)
    time.sleep(0.002)
"""


async def test_a_relay_killed_mid_stream_loses_no_line_and_repeats_none(
    *,
    relay_environment: dict[str, str],
    runner_root: Path,
    s3_server: SeaweedServer,
    nc: Client,
    tmp_path: Path,
) -> None:
    # The restarted relay is a new replica: it takes the job over once the lease ran out.
    relay = relay_process(relay_environment, tmp_path, lease_ttl_seconds=2)
    job_id = uuid4()

    async def published_at_least(count: int) -> bool:
        try:
            last = await nc.jetstream().get_last_msg(LOGS_STREAM, job_log_subject(job_id))
        except NotFoundError:
            return False
        assert last.data is not None
        return LogEntry.model_validate_json(last.data).seq >= count

    async with LocalRunner(runner_root) as runner:
        try:
            await relay.start()
            workload = await runner.create(python_workload(job_id, NUMBERED_LINES))
            await wait_until(lambda: published_at_least(LINES // 10), "the first lines published")
            os.killpg(process_id(relay), signal.SIGKILL)
            await relay.stop()
            status = await runner.get(workload.name)
            assert status is not None
            assert not status.is_finished, "the kill came after the workload's end"

            await relay.start()
            archive = await wait_for_archive(s3_server, job_id)
        finally:
            await relay.stop()
            for status in await runner.list():
                await runner.delete(status.name)

    messages = await published(nc, job_id)
    entries = entries_of(messages)
    assert [entry.message for entry in entries] == [f"line {n}" for n in range(1, LINES + 1)]
    assert [entry.seq for entry in entries] == list(range(1, LINES + 1))
    assert archive == b"".join(message + b"\n" for message in messages)
