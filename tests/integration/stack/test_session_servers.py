"""The session fixtures hand out running servers."""

from __future__ import annotations

import nats
import pytest

from ckrv.services.stack.nats_server import NatsServer

pytestmark = pytest.mark.integration


async def test_nats_fixture_serves_jetstream(nats_server: NatsServer) -> None:
    client = await nats.connect(nats_server.url)
    try:
        info = await client.jetstream().account_info()
        assert info.limits is not None
    finally:
        await client.close()
