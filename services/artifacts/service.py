"""The artifacts service (`ckrv-cloud serve artifacts`): the retention janitor's connections.

Upload URLs and verification run where they are needed (the dispatcher signs, the
watcher verifies before a job succeeds); this process keeps the results' retention.
"""

from __future__ import annotations

import asyncio

from nats.aio.client import Client
from sqlalchemy.ext.asyncio import AsyncEngine

from ckrv.events.catalog import parse_event
from ckrv.events.consumer import EventConsumer
from ckrv.events.store import JobEventStore
from ckrv.events.streams import provision_streams
from ckrv.services.artifacts.janitor import Janitor, janitor_spec
from ckrv.services.artifacts.settings import ArtifactsSettings
from ckrv.services.common.connections import connect_nats, connection_checks
from ckrv.services.common.db import create_engine, session_factory
from ckrv.services.common.http import ReadinessCheck
from ckrv.services.common.service import Service
from ckrv.services.common.settings import CommonSettings
from ckrv.services.common.storage import storage_client


class ArtifactsService(Service):
    name = "artifacts"

    def __init__(self, common: CommonSettings, settings: ArtifactsSettings) -> None:
        self._common = common
        self._settings = settings
        self._nats: Client | None = None
        self._engine: AsyncEngine | None = None
        self.janitor: Janitor | None = None

    async def start(self) -> None:
        self._nats = await connect_nats(self._common.nats_url, name=self.name)
        await provision_streams(self._nats.jetstream())
        self._engine = create_engine(self._common.database_url.get_secret_value())
        self.janitor = Janitor(
            settings=self._settings,
            sessions=session_factory(self._engine),
            store=JobEventStore(self._nats),
            storage=storage_client(self._common),
            bucket=self._common.s3_bucket,
        )

    def readiness_checks(self) -> dict[str, ReadinessCheck]:
        return connection_checks(lambda: self._nats, lambda: self._engine)

    async def run(self, stop: asyncio.Event) -> None:
        assert self._nats is not None
        assert self.janitor is not None
        consumer = EventConsumer(
            self._nats.jetstream(), janitor_spec(), parse_event, self.janitor.handle
        )
        await asyncio.gather(consumer.run(stop), self.janitor.expire_until(stop))

    async def close(self) -> None:
        if self._nats is not None:
            await self._nats.drain()
        if self._engine is not None:
            await self._engine.dispose()
