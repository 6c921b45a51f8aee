"""Services that follow the job events: their connections, opened at start, closed at stop.

Such a service is its work (an object with `run(stop)`) built from `Connections`:
NATS with the streams provisioned, PostgreSQL sessions, the job event store and,
for those that handle workloads, the runner. `EventService` opens them when the
process starts, answers /readyz on them, runs the work, and closes them in reverse
order after it returned.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from nats.aio.client import Client
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from ckrv.events.store import JobEventStore
from ckrv.events.streams import provision_streams
from ckrv.services.common.connections import connect_nats, connection_checks
from ckrv.services.common.db import create_engine, session_factory
from ckrv.services.common.http import ReadinessCheck
from ckrv.services.common.service import Service
from ckrv.services.common.settings import CommonSettings

if TYPE_CHECKING:
    from ckrv.services.runners.base import Runner
    from ckrv.services.runners.settings import RunnerSettings


class Work(Protocol):
    async def run(self, stop: asyncio.Event) -> None: ...


@dataclass(frozen=True)
class Connections:
    """What a service's work is built from; closed with the `resources` stack."""

    common: CommonSettings
    nats: Client
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    store: JobEventStore
    resources: AsyncExitStack

    async def runner(self, settings: RunnerSettings) -> Runner:
        """The runner backend the settings name, closed with the other connections."""
        from ckrv.services.runners.backends import open_runner

        return await self.resources.enter_async_context(open_runner(settings))


@asynccontextmanager
async def connected(common: CommonSettings, *, name: str) -> AsyncIterator[Connections]:
    """Connections to the configured NATS and PostgreSQL, as a service named `name`."""
    async with AsyncExitStack() as resources:
        nats = await connect_nats(common.nats_url, name=name)
        resources.push_async_callback(nats.drain)
        await provision_streams(nats.jetstream(), replicas=common.stream_replicas)
        engine = create_engine(common.database_url.get_secret_value())
        resources.push_async_callback(engine.dispose)
        yield Connections(
            common, nats, engine, session_factory(engine), JobEventStore(nats), resources
        )


class EventService(Service):
    """A service whose work `build` makes from its connections."""

    def __init__(
        self,
        name: str,
        common: CommonSettings,
        build: Callable[[Connections], Awaitable[Work]],
    ) -> None:
        self.name = name
        self._common = common
        self._build = build
        self._exit = AsyncExitStack()
        self._connections: Connections | None = None
        self.work: Work | None = None

    async def start(self) -> None:
        self._connections = await self._exit.enter_async_context(
            connected(self._common, name=self.name)
        )
        self.work = await self._build(self._connections)

    def readiness_checks(self) -> dict[str, ReadinessCheck]:
        return connection_checks(
            lambda: self._connections.nats if self._connections else None,
            lambda: self._connections.engine if self._connections else None,
        )

    async def run(self, stop: asyncio.Event) -> None:
        assert self.work is not None
        await self.work.run(stop)

    async def close(self) -> None:
        await self._exit.aclose()


class Concurrently:
    """Work made of parts that run side by side, each returning once `stop` is set.

    It returns only once every part has ended: the connections close after it, and must
    not close under a part still at work (a handler finishing its event). If a part
    fails, the others are cancelled (a consumer hands back the events it had in hand),
    and the failure is raised once they have ended.
    """

    def __init__(self, *parts: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
        self._parts = parts

    async def run(self, stop: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as parts:
            for part in self._parts:
                parts.create_task(part(stop))
