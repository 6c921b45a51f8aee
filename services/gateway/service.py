"""The gateway process: the FastAPI app with its connections to NATS and PostgreSQL."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI
from nats.aio.client import Client
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from ckrv.events.streams import provision_streams
from ckrv.services.common.connections import connect_nats
from ckrv.services.common.db import create_engine
from ckrv.services.common.http import ReadinessCheck
from ckrv.services.common.service import Service
from ckrv.services.common.settings import CommonSettings


class GatewayService(Service):
    name = "gateway"

    def __init__(self, common: CommonSettings) -> None:
        self._common = common
        self._nats: Client | None = None
        self._engine: AsyncEngine | None = None
        self.app = FastAPI(title="Chakravarti Cloud API", version="1")

    async def start(self) -> None:
        self._nats = await connect_nats(self._common.nats_url, name=self.name)
        await provision_streams(self._nats.jetstream())
        self._engine = create_engine(self._common.database_url.get_secret_value())

    def readiness_checks(self) -> dict[str, ReadinessCheck]:
        async def nats_connected() -> None:
            if self._nats is None or not self._nats.is_connected:
                raise ConnectionError("not connected to NATS")

        async def database_reachable() -> None:
            if self._engine is None:
                raise ConnectionError("no database engine")
            async with self._engine.connect() as connection:
                await connection.execute(text("select 1"))

        return {"nats": nats_connected, "database": database_reachable}

    def http_app(self) -> FastAPI:
        return self.app

    async def run(self, stop: asyncio.Event) -> None:
        await stop.wait()

    async def close(self) -> None:
        if self._nats is not None:
            await self._nats.drain()
        if self._engine is not None:
            await self._engine.dispose()
