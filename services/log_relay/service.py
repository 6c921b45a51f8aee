"""The log-relay as a service (`ckrv-cloud serve log-relay`): its connections and lifecycle."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client
from sqlalchemy.ext.asyncio import AsyncEngine

from ckrv.events.streams import provision_streams
from ckrv.services.common.connections import connect_nats, connection_checks
from ckrv.services.common.db import create_engine, session_factory
from ckrv.services.common.http import ReadinessCheck
from ckrv.services.common.service import Service
from ckrv.services.common.settings import CommonSettings
from ckrv.services.log_relay.relay import LogRelay
from ckrv.services.log_relay.settings import LogRelaySettings
from ckrv.services.runners.backends import open_runner
from ckrv.services.runners.base import Runner
from ckrv.services.runners.settings import RunnerSettings


class LogRelayService(Service):
    name = "log-relay"

    def __init__(
        self, common: CommonSettings, settings: LogRelaySettings, runner: RunnerSettings
    ) -> None:
        self._common = common
        self._settings = settings
        self._runner_settings = runner
        self._nats: Client | None = None
        self._engine: AsyncEngine | None = None
        self._runner: Runner | None = None
        self.relay: LogRelay | None = None

    async def start(self) -> None:
        self._nats = await connect_nats(self._common.nats_url, name=self.name)
        await provision_streams(self._nats.jetstream())
        self._engine = create_engine(self._common.database_url.get_secret_value())
        self._runner = open_runner(self._runner_settings)
        self.relay = LogRelay(
            common=self._common,
            settings=self._settings,
            nc=self._nats,
            sessions=session_factory(self._engine),
            runner=self._runner,
        )

    def readiness_checks(self) -> dict[str, ReadinessCheck]:
        return connection_checks(lambda: self._nats, lambda: self._engine)

    async def run(self, stop: asyncio.Event) -> None:
        assert self.relay is not None
        await self.relay.run(stop)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.close()
        if self._nats is not None:
            await self._nats.drain()
        if self._engine is not None:
            await self._engine.dispose()
