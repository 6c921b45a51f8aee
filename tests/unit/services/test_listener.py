"""The socket a service listens on: its connections send small writes at once (no Nagle)."""

from __future__ import annotations

import asyncio
import socket

from ckrv.services.common.service import _bind


async def test_accepted_connections_have_tcp_nodelay() -> None:
    listener = _bind("127.0.0.1", 0)
    accepted: asyncio.Future[socket.socket] = asyncio.get_running_loop().create_future()

    class Recorder(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted.set_result(transport.get_extra_info("socket"))

    server = await asyncio.get_running_loop().create_server(Recorder, sock=listener)
    try:
        _, writer = await asyncio.open_connection(*listener.getsockname())
        connection = await asyncio.wait_for(accepted, 5)
        # Without it, a response written as headers then body waits ~40 ms for the client's
        # delayed ACK on every keep-alive request.
        assert connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        writer.close()
        await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()
