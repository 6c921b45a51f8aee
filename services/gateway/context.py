"""What request handlers share (settings, sessions, NATS, events, logs, results) as dependencies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from nats.aio.client import Client
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from ckrv.events.store import JobEventStore
from ckrv.services.common.sealing import KeyRing
from ckrv.services.gateway.artifact_store import ArtifactStore
from ckrv.services.gateway.identity.flows import IdentityPolicy
from ckrv.services.gateway.identity.keys import SigningKeys
from ckrv.services.gateway.live_logs import LiveLogs
from ckrv.services.gateway.log_history import LogArchive
from ckrv.services.gateway.outbox import PublishedMarks
from ckrv.services.gateway.settings import GatewaySettings


@dataclass(frozen=True)
class GatewayContext:
    settings: GatewaySettings
    # The engine behind `sessions`, for statements run on its connections directly.
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    nats: Client
    store: JobEventStore
    keys: SigningKeys
    identity: IdentityPolicy
    # Seals stored git credentials (CKRV_CREDENTIAL_KEYS).
    credential_keys: KeyRing
    # Marks submissions' events published in batches; without it each is marked at once.
    published: PublishedMarks | None = None
    # The followed jobs' live lines; without it log streams are refused.
    live_logs: LiveLogs | None = None
    # Logs older than the LOGS stream keeps; without it they cannot be read.
    log_archive: LogArchive | None = None
    # Jobs' results in object storage; without it they cannot be downloaded.
    artifacts: ArtifactStore | None = None


# A coroutine, not a plain function: FastAPI would run that in a worker thread each time.
async def _context(request: Request) -> GatewayContext:
    context: GatewayContext = request.app.state.context
    return context


ContextDep = Annotated[GatewayContext, Depends(_context)]


async def _session(context: ContextDep) -> AsyncIterator[AsyncSession]:
    async with context.sessions() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(_session)]
