"""On a 3-node JetStream cluster, as in production, the streams are kept by as many servers as
`CKRV_STREAM_REPLICAS` says, and a stream created with fewer is scaled up in place."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from pydantic import ValidationError

from ckrv.events.streams import DEAD_LETTER_STREAM, ProvisionOutcome, provision_streams
from ckrv.events.subjects import JOBS_STREAM, LOGS_STREAM
from ckrv.services.common.settings import CommonSettings
from ckrv.services.stack.nats_server import NatsServer
from ckrv.services.stack.ports import free_ports
from ckrv.services.stack.process import answers_ok
from tests.conftest import run_on_private_loop

pytestmark = pytest.mark.integration

ALL_STREAMS = (JOBS_STREAM, LOGS_STREAM, DEAD_LETTER_STREAM)
CLUSTER_SIZE = 3


class ClusterMember(NatsServer):
    """One server of a JetStream cluster on loopback, routed to the others."""

    def __init__(
        self, state_dir: Path, *, port: int, monitor_port: int, route_port: int, routes: list[int]
    ) -> None:
        super().__init__(state_dir, port=port, monitor_port=monitor_port)
        self.route_port = route_port
        self.routes = routes

    def command(self) -> list[str]:
        single = super().command()
        named = single[: single.index("--server_name")]
        return [
            *named,
            "--server_name",
            f"ckrv-{self.port}",
            "--cluster_name",
            "ckrv",
            "--cluster",
            f"nats://{self.host}:{self.route_port}",
            "--routes",
            ",".join(f"nats://{self.host}:{port}" for port in self.routes),
        ]

    async def is_ready(self) -> bool:
        # Clustered JetStream is healthy only once the cluster has elected its meta leader.
        return await answers_ok(f"{self.monitor_url}/healthz")


@pytest.fixture
def nats_cluster(server_tmp_path: Path) -> Iterator[list[ClusterMember]]:
    ports = free_ports(3 * CLUSTER_SIZE)
    route_ports = ports[2 * CLUSTER_SIZE :]
    members = [
        ClusterMember(
            server_tmp_path / f"nats-{index}",
            port=ports[index],
            monitor_port=ports[CLUSTER_SIZE + index],
            route_port=route_ports[index],
            routes=[port for port in route_ports if port != route_ports[index]],
        )
        for index in range(CLUSTER_SIZE)
    ]

    async def start_all() -> None:
        # Together: no member is healthy before a majority of them is up.
        await asyncio.gather(*(member.start() for member in members))

    try:
        run_on_private_loop(start_all())
        yield members
    finally:
        for member in members:
            run_on_private_loop(member.stop())


def test_replicas_come_from_ckrv_stream_replicas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CKRV_STREAM_REPLICAS", raising=False)
    assert CommonSettings(env="dev").stream_replicas == 1
    monkeypatch.setenv("CKRV_STREAM_REPLICAS", "3")
    assert CommonSettings(env="dev").stream_replicas == 3
    monkeypatch.setenv("CKRV_STREAM_REPLICAS", "0")
    with pytest.raises(ValidationError, match="stream_replicas"):
        CommonSettings(env="dev")


async def test_streams_are_replicated_and_scaled_up_in_place(
    nats_cluster: list[ClusterMember],
) -> None:
    nc = await nats.connect(nats_cluster[0].url)
    js = nc.jetstream()
    try:
        assert await provision_streams(js, replicas=1) == dict.fromkeys(
            ALL_STREAMS, ProvisionOutcome.CREATED
        )
        await js.publish("jobs.some-job.submitted", b"{}")
        before = await js.stream_info(JOBS_STREAM)
        assert before.config.num_replicas == 1

        assert await provision_streams(js, replicas=CLUSTER_SIZE) == dict.fromkeys(
            ALL_STREAMS, ProvisionOutcome.UPDATED
        )
        for stream in ALL_STREAMS:
            assert (await js.stream_info(stream)).config.num_replicas == CLUSTER_SIZE
        after = await js.stream_info(JOBS_STREAM)
        # Updated, not recreated: the event history is still there.
        assert after.created == before.created
        assert after.state.messages == 1

        assert await provision_streams(js, replicas=CLUSTER_SIZE) == dict.fromkeys(
            ALL_STREAMS, ProvisionOutcome.UNCHANGED
        )
        # Without a count, provisioning leaves the cluster's as it is.
        assert await provision_streams(js) == dict.fromkeys(ALL_STREAMS, ProvisionOutcome.UNCHANGED)
    finally:
        await nc.close()
