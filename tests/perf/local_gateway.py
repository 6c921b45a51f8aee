"""A throw-away gateway for benchmarks: its own nats-server, PostgreSQL and one gateway process."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from ckrv.services.common.db import create_schema
from ckrv.services.stack.nats_server import NatsServer
from ckrv.services.stack.ports import free_ports
from ckrv.services.stack.postgres_server import PostgresServer
from tests.running_gateway import RunningGateway, started_gateway


@dataclass(frozen=True)
class LocalGateway:
    gateway: RunningGateway
    nats_url: str
    database_url: str


@asynccontextmanager
async def local_gateway() -> AsyncIterator[LocalGateway]:
    state = Path(tempfile.mkdtemp(prefix="ckrv-bench-"))
    # PostgreSQL runs as `nobody` when the benchmark runs as root: it must pass through.
    state.chmod(0o711)
    nats_port, monitor_port, postgres_port = free_ports(3)
    nats_server = NatsServer(state / "nats", port=nats_port, monitor_port=monitor_port)
    postgres = PostgresServer(state / "postgres", port=postgres_port)
    try:
        await nats_server.start()
        await postgres.start()
        await create_schema(postgres.dsn)
        async with started_gateway(nats_url=nats_server.url, database_url=postgres.dsn) as gateway:
            yield LocalGateway(gateway, nats_server.url, postgres.dsn)
    finally:
        await postgres.stop()
        await nats_server.stop()
        shutil.rmtree(state, ignore_errors=True)
