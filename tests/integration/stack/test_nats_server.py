"""NatsServer: starts with JetStream, answers JetStream requests, stops without survivors."""

from __future__ import annotations

import socket
from pathlib import Path

import nats
import pytest

from ckrv.services.stack.nats_server import NatsServer
from ckrv.services.stack.ports import free_ports, is_port_free
from ckrv.services.stack.process import StartError
from tests.processes import process_tree, survivors

pytestmark = pytest.mark.integration


async def test_serves_jetstream_and_stops_leaving_no_process(server_tmp_path: Path) -> None:
    port, monitor_port = free_ports(2)
    server = NatsServer(server_tmp_path / "nats", port=port, monitor_port=monitor_port)
    await server.start()
    try:
        assert server.process is not None
        assert server.process.pid is not None
        running = process_tree(server.process.pid)
        assert running
        client = await nats.connect(server.url)
        try:
            jetstream = client.jetstream()
            await jetstream.add_stream(name="PROBE", subjects=["probe.>"])
            ack = await jetstream.publish("probe.one", b"hello")
            assert ack.stream == "PROBE"
            assert ack.seq == 1
        finally:
            await client.close()
    finally:
        await server.stop()
    assert server.process.returncode == 0
    assert survivors(running) == set()
    assert is_port_free(port)
    assert is_port_free(monitor_port)


async def test_a_taken_port_fails_the_start_with_the_servers_own_words(
    server_tmp_path: Path,
) -> None:
    port, monitor_port = free_ports(2)
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        server = NatsServer(server_tmp_path / "nats", port=port, monitor_port=monitor_port)
        with pytest.raises(StartError) as failure:
            await server.start(timeout=20)
    message = str(failure.value)
    assert message.startswith("nats exited with code")
    assert "address already in use" in message
    assert str(server.log_path) in message
    assert server.process is not None
    assert server.process.returncode is not None
    assert is_port_free(monitor_port)
