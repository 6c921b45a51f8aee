"""The local stack: NATS, PostgreSQL and SeaweedFS, provisioned, then every service, until a signal.

`Stack.run()` checks every port first, starts the servers in parallel, sets up
streams and schema, starts the services, writes `stack.json` (endpoints and
credentials, mode 0600) into the state folder, and waits. SIGINT or SIGTERM
stops the services, then the servers, within `stop_timeout_seconds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import json
import os
import shutil
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ckrv.services.stack.errors import StackError
from ckrv.services.stack.nats_server import NatsServer
from ckrv.services.stack.ports import ensure_ports_free
from ckrv.services.stack.postgres_server import PostgresServer
from ckrv.services.stack.process import Supervised
from ckrv.services.stack.provision import provision
from ckrv.services.stack.seaweed_server import DEFAULT_BUCKET, SeaweedPorts, SeaweedServer
from ckrv.services.stack.service_process import ServiceProcess, connection_environment
from ckrv.services.stack.state import development_credential_keys, write_private_file

STACK_FILE = "stack.json"
LOCK_FILE = "stack.lock"
GRPC_PORT_OFFSET = 10000
# Shares of the stop budget: services first, then servers; the rest covers SIGKILL and reaping.
SERVICES_STOP_SHARE = 0.4
SERVERS_STOP_SHARE = 0.5
# Of its stop share, how long a service may spend finishing in-flight work.
SERVICE_DRAIN_SHARE = 0.75


def registered_services() -> tuple[str, ...]:
    """Every service `ckrv-cloud serve` knows, in the order they are registered."""
    # Imported late: the operator CLI imports this package to offer `up`.
    from ckrv.services.operator import SERVICES

    return tuple(SERVICES)


def _port(default: int, description: str) -> Any:
    return Field(default=default, ge=1, le=65535, description=description)


def _grpc_port(description: str) -> Any:
    return Field(
        default=None, ge=1, le=65535, description=f"{description}; default: its HTTP port + 10000."
    )


class StackSettings(BaseModel):
    """Where the local stack keeps its data and which loopback ports it listens on."""

    model_config = ConfigDict(frozen=True)

    state_dir: Path = Field(
        default=Path(".ckrv-state"), description="Folder with every server's data and logs."
    )
    fresh: bool = Field(default=False, description="Delete the state folder's contents first.")
    host: str = Field(default="127.0.0.1", description="Loopback address every server binds.")
    nats_port: int = _port(4222, "NATS client port")
    nats_monitor_port: int = _port(8222, "NATS monitoring (HTTP) port")
    postgres_port: int = _port(5432, "PostgreSQL port")
    s3_port: int = _port(8333, "S3 endpoint port")
    s3_grpc_port: int | None = _grpc_port("SeaweedFS S3 gRPC port")
    seaweed_master_port: int = _port(9333, "SeaweedFS master port")
    seaweed_master_grpc_port: int | None = _grpc_port("SeaweedFS master gRPC port")
    seaweed_volume_port: int = _port(9340, "SeaweedFS volume server port")
    seaweed_volume_grpc_port: int | None = _grpc_port("SeaweedFS volume server gRPC port")
    seaweed_filer_port: int = _port(8888, "SeaweedFS filer port")
    seaweed_filer_grpc_port: int | None = _grpc_port("SeaweedFS filer gRPC port")
    seaweed_admin_port: int = Field(
        default=23646,
        ge=1,
        le=65535 - GRPC_PORT_OFFSET,
        description="SeaweedFS admin port; its gRPC port is always this + 10000.",
    )
    services_port: int = _port(8080, "HTTP port of the first service; each next one takes +1")
    bucket: str = Field(default=DEFAULT_BUCKET, description="S3 bucket for job results.")
    services: tuple[str, ...] = Field(
        default_factory=registered_services, description="Services to run, by `serve` name."
    )
    start_timeout_seconds: float = Field(
        default=60.0, gt=0, description="How long each server and service may take to be ready."
    )
    stop_timeout_seconds: float = Field(
        default=10.0, gt=0, description="How long stopping everything may take in total."
    )

    @field_validator("host")
    @classmethod
    def _loopback_only(cls, host: str) -> str:
        # NATS and the SeaweedFS filer take unauthenticated requests: never off this machine.
        # IPv4 only, because the endpoint URLs are built without IPv6 brackets.
        try:
            loopback = ipaddress.IPv4Address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(f"host must be an IPv4 loopback address like 127.0.0.1, not {host!r}")
        return host

    def seaweed_ports(self) -> SeaweedPorts:
        def grpc(explicit: int | None, http: int) -> int:
            return explicit if explicit is not None else http + GRPC_PORT_OFFSET

        return SeaweedPorts(
            s3=self.s3_port,
            s3_grpc=grpc(self.s3_grpc_port, self.s3_port),
            master=self.seaweed_master_port,
            master_grpc=grpc(self.seaweed_master_grpc_port, self.seaweed_master_port),
            volume=self.seaweed_volume_port,
            volume_grpc=grpc(self.seaweed_volume_grpc_port, self.seaweed_volume_port),
            filer=self.seaweed_filer_port,
            filer_grpc=grpc(self.seaweed_filer_grpc_port, self.seaweed_filer_port),
            admin=self.seaweed_admin_port,
        )

    def service_ports(self) -> dict[str, int]:
        return {name: self.services_port + index for index, name in enumerate(self.services)}


async def _start_all(parts: Sequence[Supervised], seconds_each: float) -> None:
    """Start `parts` in parallel; if one fails, the others are cancelled (and clean up)."""
    tasks = [asyncio.create_task(part.start(seconds_each), name=part.name) for part in parts]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class Stack:
    """The whole local deployment, run in the foreground by `run()`."""

    def __init__(self, settings: StackSettings, out: TextIO = sys.stdout) -> None:
        self.settings = settings
        self.out = out
        # Absolute, so the servers see the same folder whatever their working directory.
        self.state_dir = settings.state_dir.absolute()
        host = settings.host
        self.nats = NatsServer(
            self.state_dir / "nats",
            port=settings.nats_port,
            monitor_port=settings.nats_monitor_port,
            host=host,
        )
        self.postgres = PostgresServer(
            self.state_dir / "postgres", port=settings.postgres_port, host=host
        )
        self.s3 = SeaweedServer(
            self.state_dir / "seaweed",
            ports=settings.seaweed_ports(),
            host=host,
            bucket=settings.bucket,
        )
        self.servers: list[Supervised] = [self.nats, self.postgres, self.s3]
        # Built once the servers run: their credentials exist only from then on.
        self.services: list[ServiceProcess] = []

    @property
    def stack_file(self) -> Path:
        return self.state_dir / STACK_FILE

    def wanted_ports(self) -> list[tuple[str, int]]:
        settings = self.settings
        return [
            ("nats", settings.nats_port),
            ("nats monitor", settings.nats_monitor_port),
            ("postgres", settings.postgres_port),
            *settings.seaweed_ports().by_owner().items(),
            *settings.service_ports().items(),
        ]

    async def run(self) -> int:
        """Run until SIGINT/SIGTERM (exit code 0) or until a child dies (1).

        Raises `StackError` when a port is taken or something fails to start; by then
        everything that was started has been stopped again.
        """
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            ensure_ports_free(self.wanted_ports(), self.settings.host)
            with self._locked_state_dir():
                if self.settings.fresh:
                    self._wipe_state()
                return await self._run_until_stopped(stop)
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)

    async def _run_until_stopped(self, stop: asyncio.Event) -> int:
        stopping = asyncio.create_task(stop.wait())
        try:
            startup = asyncio.create_task(self._start())
            await asyncio.wait({startup, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not startup.done():
                self._say("stopping before the stack was ready")
                startup.cancel()
                await asyncio.gather(startup, return_exceptions=True)
                return 0
            startup.result()
            self._write_stack_file()
            self._print_endpoints()
            return await self._supervise(stopping)
        finally:
            stopping.cancel()
            await self._stop()
            self.stack_file.unlink(missing_ok=True)

    async def _start(self) -> None:
        settings = self.settings
        self._say(f"starting nats, postgres and seaweedfs in {self.state_dir}")
        await _start_all(self.servers, settings.start_timeout_seconds)
        for server in self.servers:
            self._say(f"  {server.name:<10} ready in {server.startup_seconds or 0:.1f} s")
        try:
            async with asyncio.timeout(settings.start_timeout_seconds):
                streams = await provision(
                    self.nats.url, self.postgres.dsn, self.s3.client(), self.s3.bucket
                )
        except Exception as error:
            raise StackError(f"provisioning failed: {type(error).__name__}: {error}") from error
        outcomes = ", ".join(f"{stream} {outcome}" for stream, outcome in streams.items())
        self._say(f"  streams    {outcomes}; database schema up to date")
        connections = self._connections()
        service_stop = settings.stop_timeout_seconds * SERVICES_STOP_SHARE
        self.services = [
            ServiceProcess(
                name,
                port=port,
                host=settings.host,
                log_dir=self.state_dir / "services",
                connections=connections,
                shutdown_timeout_seconds=service_stop * SERVICE_DRAIN_SHARE,
            )
            for name, port in settings.service_ports().items()
        ]
        await _start_all(self.services, settings.start_timeout_seconds)
        for service in self.services:
            self._say(f"  {service.name:<10} ready in {service.startup_seconds or 0:.1f} s")

    async def _supervise(self, stopping: asyncio.Task[Any]) -> int:
        watchers = {
            asyncio.create_task(part.exited()): part for part in [*self.servers, *self.services]
        }
        try:
            done, _ = await asyncio.wait({stopping, *watchers}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for watcher in watchers:
                watcher.cancel()
        crashed = [watchers[task] for task in done if task in watchers]
        if not crashed:
            self._say("stopping")
            return 0
        for part in crashed:
            assert part.process is not None
            code = await part.process.wait()
            message = part.failure(f"exited unexpectedly with code {code}")
            print(f"ckrv-cloud up: {message}", file=sys.stderr, flush=True)
        return 1

    async def _stop(self) -> None:
        budget = self.settings.stop_timeout_seconds
        await asyncio.gather(
            *(service.stop(budget * SERVICES_STOP_SHARE) for service in self.services)
        )
        await asyncio.gather(*(server.stop(budget * SERVERS_STOP_SHARE) for server in self.servers))

    @contextlib.contextmanager
    def _locked_state_dir(self) -> Iterator[None]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with (self.state_dir / LOCK_FILE).open("a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StackError(
                    f"another stack is running with the state folder {self.state_dir}"
                ) from None
            yield

    def _wipe_state(self) -> None:
        self._say(f"deleting everything in {self.state_dir}")
        for entry in self.state_dir.iterdir():
            if entry.name == LOCK_FILE:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    def endpoints(self) -> dict[str, Any]:
        """What a client needs to reach the running stack, credentials included."""
        return {
            "pid": os.getpid(),
            "state_dir": str(self.state_dir),
            "nats": {"url": self.nats.url, "monitor_url": self.nats.monitor_url},
            "postgres": {
                "dsn": self.postgres.dsn,
                "host": self.postgres.host,
                "port": self.postgres.port,
                "user": self.postgres.user,
                "password": self.postgres.password,
                "database": self.postgres.database,
            },
            "s3": {
                "endpoint": self.s3.endpoint,
                "access_key": self.s3.access_key,
                "secret_key": self.s3.secret_key,
                "region": self.s3.region,
                "bucket": self.s3.bucket,
            },
            "services": {service.name: {"url": service.url} for service in self.services},
            "environment": self._connections(),
        }

    def _connections(self) -> dict[str, str]:
        credential_keys = development_credential_keys(self.state_dir)
        return {
            **connection_environment(
                self.nats, self.postgres, self.s3, credential_keys=credential_keys
            ),
            # The dispatcher creates workloads here; the watcher and log-relay read them.
            "CKRV_RUNNER_ROOT": str(self.state_dir / "runner"),
        }

    def _write_stack_file(self) -> None:
        write_private_file(self.stack_file, json.dumps(self.endpoints(), indent=2) + "\n")

    def _print_endpoints(self) -> None:
        postgres = self.postgres
        lines = [
            "",
            "Chakravarti Cloud local stack",
            f"  nats       {self.nats.url}  (monitoring {self.nats.monitor_url})",
            f"  postgres   postgresql://{postgres.user}@{postgres.host}:{postgres.port}"
            f"/{postgres.database}",
            f"  s3         {self.s3.endpoint}  bucket {self.s3.bucket}"
            f"  access key {self.s3.access_key}",
            *(f"  {service.name:<10} {service.url}" for service in self.services),
            f"  passwords and keys: {self.stack_file}",
            "",
            "stack ready; Ctrl-C stops it",
        ]
        self._say("\n".join(lines))

    def _say(self, message: str) -> None:
        print(message, file=self.out, flush=True)
