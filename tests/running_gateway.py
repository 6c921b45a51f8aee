"""The handle tests get on the session's gateway process."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlmodel import col

from ckrv.schemas.api import SubscriptionTier
from ckrv.services.common.db import session_factory, temporary_engine
from ckrv.services.gateway.identity.administration import create_user
from ckrv.services.gateway.identity.flows import create_api_token
from ckrv.services.gateway.identity.keys import generate_signing_key
from ckrv.services.gateway.tables import User
from ckrv.services.stack.ports import free_ports
from ckrv.services.stack.service_process import DEVELOPMENT_SWITCHES, ServiceProcess


@dataclass(frozen=True)
class RunningGateway:
    """A `ckrv-cloud serve gateway` process on the session's servers."""

    url: str
    # The private key set it signs access tokens with, so tests can forge bad ones.
    signing_jwks: str
    log_path: Path
    database_url: str
    _process: ServiceProcess = field(compare=False, repr=False)
    _tokens: dict[tuple[str, str], str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def signing_keys(self) -> list[dict[str, Any]]:
        keys: list[dict[str, Any]] = json.loads(self.signing_jwks)["keys"]
        return keys

    @property
    def pid(self) -> int:
        """The gateway's process id, while it runs."""
        assert self._process.process is not None
        pid = self._process.process.pid
        assert pid is not None
        return pid

    @property
    def api_url(self) -> str:
        return f"{self.url}/v1"

    def token(self, email: str, tier: str = "free") -> str:
        """An API token of the user with this email, created (or moved to `tier`) on demand."""
        key = (email.lower(), tier)
        if key not in self._tokens:
            # Callers may be inside an event loop: the database work runs on a loop of its own.
            with ThreadPoolExecutor(max_workers=1) as worker:
                self._tokens[key] = worker.submit(
                    asyncio.run, _api_token(self.database_url, email, tier)
                ).result()
        return self._tokens[key]


def gateway_process(
    *,
    nats_url: str,
    database_url: str,
    log_dir: Path,
    switches: dict[str, str] | None = None,
    signing_jwks: str | None = None,
) -> tuple[ServiceProcess, RunningGateway]:
    """A gateway on a free port; not started yet.

    It signs with a fresh key unless given `signing_jwks`: replicas of one deployment
    share their keys, so each accepts the others' tokens.
    """
    (port,) = free_ports(1)
    signing_jwks = signing_jwks or json.dumps({"keys": [generate_signing_key()]})
    process = ServiceProcess(
        "gateway",
        port=port,
        log_dir=log_dir,
        connections={
            "CKRV_ENV": "dev",
            "CKRV_NATS_URL": nats_url,
            "CKRV_DATABASE_URL": database_url,
            "CKRV_GATEWAY_SIGNING_KEYS": signing_jwks,
            **DEVELOPMENT_SWITCHES,
            **(switches or {}),
        },
        shutdown_timeout_seconds=5,
    )
    return process, RunningGateway(
        process.url, signing_jwks, process.log_path, database_url, process
    )


async def _api_token(database_url: str, email: str, tier: str) -> str:
    async with temporary_engine(database_url) as engine:
        async with session_factory(engine)() as session, session.begin():
            user = await session.scalar(select(User).where(col(User.email) == email.lower()))
            if user is None:
                user, _ = await create_user(session, email, SubscriptionTier(tier))
            user.subscription_tier = tier
            _, token = await create_api_token(session, user.id, "tests", None)
        return token


@asynccontextmanager
async def started_gateway(
    *, nats_url: str, database_url: str, switches: dict[str, str] | None = None
) -> AsyncIterator[RunningGateway]:
    """A gateway process of its own on the given servers, stopped and cleaned up after."""
    log_dir = Path(tempfile.mkdtemp(prefix="ckrv-gateway-"))
    process, running = gateway_process(
        nats_url=nats_url, database_url=database_url, log_dir=log_dir, switches=switches
    )
    await process.start()
    try:
        yield running
    finally:
        await process.stop()
        shutil.rmtree(log_dir, ignore_errors=True)
