"""The service runner: one asyncio process per service, with health, signals, graceful shutdown.

A service implements `run(stop)`, doing its work until `stop` is set. The
runner serves /healthz, /readyz and /metrics next to it (on the service's own
app when it has one, as the gateway does), turns SIGTERM and SIGINT into `stop`,
and gives in-flight work `shutdown_timeout_seconds` to finish before cancelling it.
Only once the work has ended does it `close` the service's connections.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import contextlib
import gc
import logging
import signal
import socket
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import uvicorn
import uvloop
from starlette.applications import Starlette

from ckrv.services.common.http import HealthState, ReadinessCheck, health_routes
from ckrv.services.common.settings import ServiceSettings

logger = logging.getLogger(__name__)

# Allocations (less deallocations) that trigger a collection of the youngest generation.
GC_YOUNG_THRESHOLD = 10_000
# How long a thread may hold the interpreter while another one waits for it.
THREAD_SWITCH_SECONDS = 0.001
# How long cancelled work may take to end (a consumer handing back its messages) before
# the process stops without it.
CANCELLED_WORK_GRACE_SECONDS = 2.0


class Service(abc.ABC):
    """One long-running part of Chakravarti Cloud."""

    name: str

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


def serve_process(service: Service, settings: ServiceSettings) -> int:
    """Run `service` as the whole process, on uvloop's event loop; return the exit code."""
    # uvloop halves the loop's own overhead (sockets, callbacks, timers) next to asyncio's.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(run_service(service, settings))


async def run_in_thread(
    name: str, work: Callable[[asyncio.Event], Awaitable[None]], stop: asyncio.Event
) -> None:
    """Run `work(stop)` on an event loop of its own, in a thread of this process.

    Work on the process's loop waits its turn behind every ready callback, and a busy
    HTTP API can have hundreds at a time; on a loop of its own it only shares the CPU.
    `stop` is passed on to the work's loop, and the work's failure is raised here. The
    work must make its own connections: sockets and pools belong to one loop.
    """
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[None] = loop.create_future()
    handover: concurrent.futures.Future[
        tuple[asyncio.AbstractEventLoop, asyncio.Event, asyncio.Task[None]]
    ] = concurrent.futures.Future()

    def report(error: BaseException | None) -> None:
        if outcome.done():
            return
        if error is None:
            outcome.set_result(None)
        elif isinstance(error, asyncio.CancelledError):
            outcome.cancel()
        else:
            outcome.set_exception(error)

    async def main() -> None:
        own_stop = asyncio.Event()
        main_task = asyncio.current_task()
        assert main_task is not None
        handover.set_result((asyncio.get_running_loop(), own_stop, main_task))
        await work(own_stop)

    def thread_main() -> None:
        error: BaseException | None = None
        try:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(main())
        except BaseException as failure:  # handed to the awaiting side
            error = failure
        if not handover.done():
            handover.set_exception(error or RuntimeError(f"{name} ended before it started"))
        with contextlib.suppress(RuntimeError):  # the process's loop is already closed
            loop.call_soon_threadsafe(report, error)

    # A thread waiting for the interpreter gets it once the running one has held it this
    # long (5 ms by default): the work's loop must not wait that long at each of its steps.
    sys.setswitchinterval(min(sys.getswitchinterval(), THREAD_SWITCH_SECONDS))
    # A daemon: if shutdown gives up on the work, the thread does not keep the process alive.
    threading.Thread(target=thread_main, name=name, daemon=True).start()
    own_loop, own_stop, own_work = await asyncio.wrap_future(handover)
    stopping = asyncio.create_task(stop.wait())
    either: list[asyncio.Future[Any]] = [outcome, stopping]
    try:
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        with contextlib.suppress(RuntimeError):  # the work's loop has already ended
            own_loop.call_soon_threadsafe(own_stop.set)
    try:
        await asyncio.shield(outcome)
    except asyncio.CancelledError:
        # Cut off (the shutdown timeout): so is the work, on its own loop, and it has ended
        # (handing back what it held) before the caller goes on to close connections.
        with contextlib.suppress(RuntimeError):
            own_loop.call_soon_threadsafe(own_work.cancel)
        await asyncio.wait([outcome])
        raise


async def run_service(service: Service, settings: ServiceSettings) -> int:
    """Run `service` until SIGTERM/SIGINT or until it fails; return the process exit code."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        return await _serve_until_stopped(service, settings, stop)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


async def _serve_until_stopped(
    service: Service, settings: ServiceSettings, stop: asyncio.Event
) -> int:
    try:
        # Bound before anything starts, so a taken port is a clear error, not a half-started
        # service (uvicorn would exit the whole process from inside its task).
        listener = _bind(settings.http_host, settings.http_port)
    except OSError as error:
        logger.error(
            "cannot listen on %s:%s: %s", settings.http_host, settings.http_port, error.strerror
        )
        return 1
    outcome = await _start(service, settings, stop)
    if outcome is not None:
        listener.close()
        await service.close()
        return outcome
    _settle_the_heap()

    health = HealthState(service.readiness_checks())
    app = service.http_app() or Starlette()
    app.router.routes.extend(health_routes(health))
    server = _QuietSignalsServer(
        uvicorn.Config(
            app,
            log_config=None,
            lifespan="off",
            access_log=False,
            # The loop is the process's (uvloop, see `serve_process`); httptools parses
            # HTTP in C, several times faster than h11.
            loop="none",
            http="httptools",
        )
    )
    work = asyncio.create_task(service.run(stop), name=f"{service.name} work")
    http = asyncio.create_task(server.serve(sockets=[listener]), name=f"{service.name} HTTP")
    stopping = asyncio.create_task(stop.wait())
    logger.info("service started", extra={"address": listener.getsockname()})

    await asyncio.wait({work, http, stopping}, return_when=asyncio.FIRST_COMPLETED)
    ended_early = [task for task in (work, http) if task.done() and not stop.is_set()]
    health.accepting = False
    stop.set()
    server.should_exit = True
    _, unfinished = await asyncio.wait({work, http}, timeout=settings.shutdown_timeout_seconds)
    for task in unfinished:
        logger.warning("cancelling %s after the shutdown timeout", task.get_name())
        task.cancel()
    stuck: set[asyncio.Task[None]] = set()
    if unfinished:
        _, stuck = await asyncio.wait(unfinished, timeout=CANCELLED_WORK_GRACE_SECONDS)
    stopping.cancel()
    await service.close()
    listener.close()

    exit_code = 0
    for task in (work, http):
        if task in stuck:
            logger.error("%s did not end when cancelled; stopping without it", task.get_name())
            exit_code = 1
            continue
        failure = None if task.cancelled() else task.exception()
        if failure is not None or task in ended_early:
            logger.error("%s ended unexpectedly", task.get_name(), exc_info=failure)
            exit_code = 1
    logger.info("service stopped", extra={"exit_code": exit_code})
    return exit_code


async def _start(service: Service, settings: ServiceSettings, stop: asyncio.Event) -> int | None:
    """Run `service.start()`; an exit code if the process must end instead of serving."""
    starting = asyncio.create_task(service.start(), name=f"{service.name} start")
    stopping = asyncio.create_task(stop.wait())
    # A dependency that never answers must neither hang the process nor make it deaf
    # to SIGTERM: starting is bounded, and a stop request interrupts it.
    done, _ = await asyncio.wait(
        {starting, stopping},
        timeout=settings.startup_timeout_seconds,
        return_when=asyncio.FIRST_COMPLETED,
    )
    stopping.cancel()
    if starting not in done:
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        if stop.is_set():
            logger.info("stopped while starting")
            return 0
        logger.error(
            "service did not start within %s s; are its dependencies reachable?",
            settings.startup_timeout_seconds,
        )
        return 1
    if (failure := starting.exception()) is not None:
        logger.error("service could not start: %s", failure, exc_info=failure)
        return 1
    return None


def _settle_the_heap() -> None:
    """Keep the garbage collector off what lives as long as the process.

    Modules, models and mappers are some 150,000 objects that every full collection
    would traverse again (tens of ms each, on the event loop); frozen, they are skipped.
    A larger first generation also collects less often than every few hundred objects,
    which a single request allocates many times over.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named explicitly: asyncio sets TCP_NODELAY on accepted connections only
    # when their protocol says TCP, and without it Nagle holds back the body of every
    # keep-alive response behind its headers until the client's delayed ACK (~40 ms).
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
        listener.listen(2048)
    except OSError:
        listener.close()
        raise
    listener.setblocking(False)
    return listener
