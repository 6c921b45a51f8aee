"""The gateway process: the HTTP API, the jobs projector, the outbox relay and live logs."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine, Sequence
from typing import Any
from uuid import UUID

from fastapi import FastAPI
from nats.aio.client import Client
from sqlalchemy.ext.asyncio import AsyncEngine

from ckrv.events.catalog import JobEvent, JobSubmitted, parse_event
from ckrv.events.consumer import BatchEventConsumer, Delivery
from ckrv.events.history import StoredEvent
from ckrv.events.store import JobEventStore
from ckrv.events.streams import provision_streams
from ckrv.services.common.connections import connect_nats, connection_checks
from ckrv.services.common.db import create_engine, session_factory
from ckrv.services.common.event_service import Concurrently
from ckrv.services.common.http import ReadinessCheck
from ckrv.services.common.service import Service, run_in_thread
from ckrv.services.common.settings import CommonSettings
from ckrv.services.common.storage import storage_client
from ckrv.services.gateway.app import create_app
from ckrv.services.gateway.artifact_store import ArtifactStore
from ckrv.services.gateway.context import GatewayContext
from ckrv.services.gateway.identity.config import load_identity
from ckrv.services.gateway.live_logs import LiveLogs
from ckrv.services.gateway.log_history import LogArchive
from ckrv.services.gateway.outbox import PublishedMarks
from ckrv.services.gateway.projection import project_jobs, projector_spec
from ckrv.services.gateway.settings import GatewaySettings
from ckrv.services.gateway.submission import relay_outbox


class GatewayService(Service):
    name = "gateway"

    def __init__(self, common: CommonSettings, settings: GatewaySettings) -> None:
        self._common = common
        self._settings = settings
        self._nats: Client | None = None
        self._engine: AsyncEngine | None = None
        self._marks_engine: AsyncEngine | None = None
        self.app = create_app(settings=settings)

    @property
    def context(self) -> GatewayContext:
        context: GatewayContext | None = self.app.state.context
        if context is None:
            raise RuntimeError("the gateway has not started")
        return context

    async def start(self) -> None:
        self._nats = await connect_nats(self._common.nats_url, name=self.name)
        await provision_streams(self._nats.jetstream(), replicas=self._common.stream_replicas)
        database_url = self._common.database_url.get_secret_value()
        # No overflow connections: under a burst, opening and closing them cost more CPU than
        # waiting for a pooled one.
        self._engine = create_engine(
            database_url, pool_size=self._settings.database_pool_size, max_overflow=0
        )
        # The outbox marks have a connection of their own: they never wait behind requests.
        self._marks_engine = create_engine(database_url, pool_size=1)
        keys, identity = load_identity(self._settings)
        store = JobEventStore(self._nats)
        storage = storage_client(self._common)
        self.app.state.context = GatewayContext(
            settings=self._settings,
            engine=self._engine,
            sessions=session_factory(self._engine),
            nats=self._nats,
            store=store,
            keys=keys,
            identity=identity,
            credential_keys=self._common.credential_key_ring(),
            published=PublishedMarks(session_factory(self._marks_engine)),
            live_logs=LiveLogs(
                self._nats, store, follower_capacity=self._settings.log_follower_queue_lines
            ),
            log_archive=LogArchive(storage, self._common.s3_bucket),
            artifacts=ArtifactStore(storage, self._common.s3_bucket),
        )

    def readiness_checks(self) -> dict[str, ReadinessCheck]:
        return connection_checks(lambda: self._nats, lambda: self._engine)

    def http_app(self) -> FastAPI:
        return self.app

    async def run(self, stop: asyncio.Event) -> None:
        context = self.context
        parts: list[Callable[[asyncio.Event], Coroutine[Any, Any, None]]] = [
            # The projector on a loop of its own: on the API's, each of its steps would wait
            # behind every request in flight, and under load the read model fell seconds behind.
            functools.partial(run_in_thread, f"{self.name} projector", self._project),
            functools.partial(relay_outbox, context),
            self._end_log_streams,
        ]
        if context.published is not None:
            parts.append(context.published.run)
        await Concurrently(*parts).run(stop)

    async def _end_log_streams(self, stop: asyncio.Event) -> None:
        """Followed logs stream until the job ends: at a stop they end at once, so the HTTP
        server can finish; their clients reconnect to another replica."""
        await stop.wait()
        if self.context.live_logs is not None:
            self.context.live_logs.close()

    async def _project(self, stop: asyncio.Event) -> None:
        """Fold JOBS into the read model until `stop` is set, with connections of its own."""
        nc = await connect_nats(self._common.nats_url, name=f"{self.name}-projector")
        engine = create_engine(self._common.database_url.get_secret_value(), pool_size=2)
        sessions = session_factory(engine)

        async def project(deliveries: Sequence[Delivery[JobEvent]]) -> None:
            news: dict[UUID, int] = {}
            submissions: dict[UUID, StoredEvent] = {}
            for delivery in deliveries:
                event = delivery.payload
                news[event.job_id] = max(news.get(event.job_id, 0), delivery.stream_sequence)
                if isinstance(event, JobSubmitted):
                    submissions.setdefault(
                        event.job_id, StoredEvent(delivery.stream_sequence, event)
                    )
            # All the fetched events in one transaction, acked once it committed.
            async with sessions() as session, session.begin():
                await project_jobs(session, nc, news, submissions)

        try:
            projector = BatchEventConsumer(nc.jetstream(), projector_spec(), parse_event, project)
            await projector.run(stop)
        finally:
            await nc.drain()
            await engine.dispose()

    async def close(self) -> None:
        if self._nats is not None:
            await self._nats.drain()
        if self._engine is not None:
            await self._engine.dispose()
        if self._marks_engine is not None:
            await self._marks_engine.dispose()
