"""The service runner: one asyncio process per service, with health, signals, graceful shutdown.

A service implements `run(stop)`, doing its work until `stop` is set. The
runner serves /healthz, /readyz and /metrics next to it (on the service's own
app when it has one, as the gateway does), turns SIGTERM and SIGINT into `stop`,
and gives in-flight work `shutdown_timeout_seconds` to finish before cancelling it.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator
from typing import ClassVar

import uvicorn
from starlette.applications import Starlette

from ckrv.services.common.http import HealthState, ReadinessCheck, health_routes
from ckrv.services.common.settings import ServiceSettings

logger = logging.getLogger(__name__)


class Service(abc.ABC):
    """One long-running part of Chakravarti Cloud."""

    name: ClassVar[str]

    def readiness_checks(self) -> dict[str, ReadinessCheck]:
        """Dependencies /readyz checks; none by default."""
        return {}

    def http_app(self) -> Starlette | None:
        """The service's own web app, if it serves one; health routes are added to it."""
        return None

    async def start(self) -> None:  # noqa: B027 - optional hook, empty on purpose
        """Connect to what the service needs, before the HTTP endpoints open."""

    async def close(self) -> None:  # noqa: B027 - optional hook, empty on purpose
        """Release connections after `run` returned."""

    @abc.abstractmethod
    async def run(self, stop: asyncio.Event) -> None:
        """Do the service's work until `stop` is set."""


class _QuietSignalsServer(uvicorn.Server):
    """uvicorn would install its own signal handlers; the runner owns them instead."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def run_service(service: Service, settings: ServiceSettings) -> int:
    """Run `service` until SIGTERM/SIGINT or until it fails; return the process exit code."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    await service.start()
    health = HealthState(service.readiness_checks())
    app = service.http_app() or Starlette()
    app.router.routes.extend(health_routes(health))
    server = _QuietSignalsServer(
        uvicorn.Config(
            app,
            host=settings.http_host,
            port=settings.http_port,
            log_config=None,
            lifespan="off",
            access_log=False,
        )
    )
    work = asyncio.create_task(service.run(stop), name=f"{service.name}.run")
    http = asyncio.create_task(server.serve(), name=f"{service.name}.http")
    stopping = asyncio.create_task(stop.wait())
    logger.info("service started", extra={"port": settings.http_port})

    await asyncio.wait({work, http, stopping}, return_when=asyncio.FIRST_COMPLETED)
    exit_code = 0
    for task, what in ((work, "service work"), (http, "HTTP server")):
        if task.done() and not stop.is_set():
            logger.error("%s ended unexpectedly", what, exc_info=task.exception())
            exit_code = 1

    health.accepting = False
    stop.set()
    server.should_exit = True
    _, unfinished = await asyncio.wait({work, http}, timeout=settings.shutdown_timeout_seconds)
    for task in unfinished:
        logger.warning("cancelling %s after the shutdown timeout", task.get_name())
        task.cancel()
    await asyncio.gather(*unfinished, return_exceptions=True)
    stopping.cancel()
    await service.close()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(signum)
    logger.info("service stopped", extra={"exit_code": exit_code})
    return exit_code
