"""Stream provisioning is idempotent, and a changed setting updates the stream in place."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from ckrv.events.streams import (
    DAY_SECONDS,
    DEAD_LETTER_STREAM,
    ProvisionOutcome,
    StreamRetention,
    provision_streams,
)
from ckrv.events.subjects import JOBS_STREAM, LOGS_STREAM
from ckrv.services.stack.nats_server import NatsServer
from ckrv.services.stack.ports import free_ports
from tests.conftest import run_on_private_loop

pytestmark = pytest.mark.integration

ALL_STREAMS = (JOBS_STREAM, LOGS_STREAM, DEAD_LETTER_STREAM)


@pytest.fixture
def own_nats(server_tmp_path: Path) -> Iterator[NatsServer]:
    """A server of its own: these tests change stream settings others rely on."""
    port, monitor_port = free_ports(2)
    server = NatsServer(server_tmp_path, port=port, monitor_port=monitor_port)
    run_on_private_loop(server.start())
    yield server
    run_on_private_loop(server.stop())


async def test_provisioning_twice_changes_nothing_and_drift_is_updated_in_place(
    own_nats: NatsServer,
) -> None:
    nc = await nats.connect(own_nats.url)
    js = nc.jetstream()
    try:
        created = await provision_streams(js)
        assert created == dict.fromkeys(ALL_STREAMS, ProvisionOutcome.CREATED)
        before = await js.stream_info(LOGS_STREAM)
        assert await provision_streams(js) == dict.fromkeys(ALL_STREAMS, ProvisionOutcome.UNCHANGED)

        await js.publish("logs.some-job", b'{"message": "kept"}')
        shorter = StreamRetention(logs_max_age=3 * DAY_SECONDS)
        outcomes = await provision_streams(js, shorter)
        assert outcomes[LOGS_STREAM] is ProvisionOutcome.UPDATED
        assert outcomes[JOBS_STREAM] is ProvisionOutcome.UNCHANGED

        after = await js.stream_info(LOGS_STREAM)
        assert after.config.max_age == pytest.approx(3 * DAY_SECONDS)
        # Updated, not recreated: same creation time, and the message is still there.
        assert after.created == before.created
        assert after.state.messages == 1
        assert (await provision_streams(js, shorter))[LOGS_STREAM] is ProvisionOutcome.UNCHANGED
    finally:
        await nc.close()


async def test_jobs_history_cannot_be_deleted_or_purged(own_nats: NatsServer) -> None:
    nc = await nats.connect(own_nats.url)
    js = nc.jetstream()
    try:
        await provision_streams(js)
        acknowledgement = await js.publish("jobs.some-job.submitted", b"{}")
        with pytest.raises(nats.js.errors.APIError):
            await js.delete_msg(JOBS_STREAM, acknowledgement.seq)
        with pytest.raises(nats.js.errors.APIError):
            await js.purge_stream(JOBS_STREAM)
        assert (await js.stream_info(JOBS_STREAM)).state.messages == 1
    finally:
        await nc.close()
