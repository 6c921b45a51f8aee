"""Jobs that really run: a gateway, the dispatcher and the watcher on servers of their own.

The module's services get a nats-server and a database of their own (on the
session's PostgreSQL), so the session's other jobs never reach this dispatcher,
and the session's SeaweedFS for results. Workloads run `ckrv-worker` on the local
runner, sandboxed when bubblewrap is there, and clone from the session's git servers.
`started_execution` builds such a stack with any services, each as several
replicas behind several gateways (the scale tests' deployment).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, overload
from uuid import UUID, uuid4

import httpx
import pytest
from sqlalchemy import text

from ckrv.services.common.db import create_schema
from ckrv.services.common.event_service import Connections, connected
from ckrv.services.common.settings import DEVELOPMENT_CREDENTIAL_KEYS, CommonSettings
from ckrv.services.dispatcher.service import Dispatcher
from ckrv.services.dispatcher.settings import DispatcherSettings
from ckrv.services.gateway.identity.keys import generate_signing_key
from ckrv.services.runners.local import LocalRunner
from ckrv.services.stack.nats_server import NatsServer
from ckrv.services.stack.ports import free_ports
from ckrv.services.stack.postgres_server import PostgresServer
from ckrv.services.stack.seaweed_server import SeaweedServer
from ckrv.services.stack.service_process import ServiceProcess, connection_environment
from tests.conftest import new_server_dir
from tests.git_servers import (
    GitHttpServer,
    create_sample_repository,
    git_http_server,
    git_repositories,
    git_ssh_server,
)
from tests.running_gateway import RunningGateway, gateway_process

__all__ = ["git_http_server", "git_repositories", "git_ssh_server"]

TERMINAL = {"succeeded", "failed", "timeout", "cancelled"}


LocalRunnerKind = TypeVar("LocalRunnerKind", bound=LocalRunner)

# What the execution tests run beside the gateway.
EXECUTION_SERVICES = ("dispatcher", "watcher", "log-relay")
DISPATCH_LEASE_SECONDS = 2.0


@dataclass
class Execution:
    """The module's services, and what tests need to drive them as users do."""

    gateways: list[RunningGateway]
    nats_url: str
    database_url: str
    runner_root: Path
    replicas: dict[str, list[ServiceProcess]]
    """Every process by service name, the gateways' under `gateway`."""
    git: GitHttpServer
    repositories: Path

    @property
    def gateway(self) -> RunningGateway:
        return self.gateways[0]

    @property
    def services(self) -> dict[str, ServiceProcess]:
        """The first replica of each service."""
        return {name: processes[0] for name, processes in self.replicas.items()}

    def client(self, tier: str = "pro") -> httpx.Client:
        """An API client of a new user of `tier`."""
        token = self.gateway.token(f"runner-{uuid4().hex[:12]}@example.com", tier)
        return httpx.Client(
            base_url=self.gateway.api_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )

    def repository(self, *, local: bool = False) -> str:
        """A fresh sample repository: its https URL on the session's git server, or (`local`)
        its path, which workloads clone from directly (a development stack allows it)."""
        sample = create_sample_repository(self.repositories, f"sample-{uuid4().hex[:8]}")
        return str(sample.path) if local else self.git.url_for(sample.path)

    @overload
    def runner(self) -> LocalRunner: ...
    @overload
    def runner(self, kind: type[LocalRunnerKind]) -> LocalRunnerKind: ...
    def runner(self, kind: type[LocalRunner] = LocalRunner) -> LocalRunner:
        """A runner (of `kind`) over the module's workloads, set up as the module's services are."""
        return kind(
            self.runner_root, sandbox_read_only_paths=workload_readable(self.git, self.repositories)
        )


def workload_readable(git: GitHttpServer, repositories: Path) -> list[Path]:
    """What sandboxed workloads may read besides the system: the git server's CA
    certificate, and the sample repositories for jobs that clone them by path."""
    return [git.tls.ca_certificate.parent, repositories]


@asynccontextmanager
async def in_process(execution: Execution, s3: SeaweedServer) -> AsyncIterator[Connections]:
    """Connections like the module's services have, for a service built in the test."""
    common = CommonSettings(
        env="dev",
        nats_url=execution.nats_url,
        database_url=execution.database_url,
        s3_endpoint=s3.endpoint,
        s3_access_key=s3.access_key,
        s3_secret_key=s3.secret_key,
        s3_region=s3.region,
        s3_bucket=s3.bucket,
    )
    async with connected(common, name="in-process-service") as connections:
        yield connections


def dispatcher_in_process(
    execution: Execution, connections: Connections, runner: LocalRunner
) -> Dispatcher:
    """A dispatcher built as the module's is, on `runner`."""
    return Dispatcher(
        common=connections.common,
        settings=DispatcherSettings(
            workload_env=execution.git.client_environment,
            dispatch_lease_seconds=DISPATCH_LEASE_SECONDS,
        ),
        sessions=connections.sessions,
        store=connections.store,
        runner=runner,
    )


def submit(
    client: httpx.Client,
    repository: str,
    script: list[str],
    *,
    credential: str | None = None,
    base_branch: str = "main",
) -> UUID:
    spec = {
        "id": "runner-test",
        "overview": "Exercise the execution path.",
        "script": script,
    }
    body: dict[str, Any] = {
        "spec_content": json.dumps(spec),
        "git_repo_url": repository,
        "git_base_branch": base_branch,
        "git_credential_name": credential,
    }
    response = client.post("/jobs", json=body)
    assert response.status_code == 201, response.text
    return UUID(response.json()["id"])


def add_pat(client: httpx.Client, value: str, name: str = "git-server") -> str:
    response = client.post(
        "/credentials",
        json={"name": name, "provider": "generic", "credential_type": "pat", "value": value},
    )
    assert response.status_code == 201, response.text
    return name


def wait_for(
    client: httpx.Client, job_id: UUID, statuses: set[str] = TERMINAL, within: float = 60.0
) -> dict[str, Any]:
    """The job as the API shows it, once its status is one of `statuses`."""
    deadline = time.monotonic() + within
    while True:
        job: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        assert time.monotonic() < deadline, f"job still {job['status']} after {within} s: {job}"
        time.sleep(0.1)


def assert_succeeded(job: dict[str, Any]) -> None:
    assert job["status"] == "succeeded", f"{job['status']}: {job['error_message']}"


def event_types(client: httpx.Client, job_id: UUID) -> list[str]:
    events = client.get(f"/jobs/{job_id}/events").json()["events"]
    return [event["type"] for event in events]


def service_process(name: str, log_dir: Path, environment: dict[str, str]) -> ServiceProcess:
    (port,) = free_ports(1)
    return ServiceProcess(
        name,
        port=port,
        log_dir=log_dir,
        connections=environment,
        shutdown_timeout_seconds=10,
    )


@pytest.fixture(scope="module")
def execution_dir() -> Iterator[Path]:
    path = new_server_dir("ckrv-execution-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@asynccontextmanager
async def started_execution(
    base: Path,
    postgres: PostgresServer,
    s3: SeaweedServer,
    git: GitHttpServer,
    repositories: Path,
    *,
    services: Sequence[str] = EXECUTION_SERVICES,
    replicas: int = 1,
    gateways: int = 1,
    settings: Mapping[str, str] | None = None,
) -> AsyncIterator[Execution]:
    """A nats-server and a database of their own, `gateways` gateways and `replicas` of each
    of `services` on them, with `settings` (`CKRV_*` variables) over the module's own."""
    port, monitor_port = free_ports(2)
    nats = NatsServer(base / "nats", port=port, monitor_port=monitor_port)
    await nats.start()
    database = f"execution_{uuid4().hex[:12]}"
    async with postgres.connect("postgres") as connection:
        await connection.execute(text(f'CREATE DATABASE "{database}"'))
    database_url = postgres.dsn.rsplit("/", 1)[0] + f"/{database}"
    await create_schema(database_url)
    runner_root = base / "runner"
    environment = {
        **connection_environment(nats, postgres, s3, credential_keys=DEVELOPMENT_CREDENTIAL_KEYS),
        "CKRV_DATABASE_URL": database_url,
        "CKRV_RUNNER_ROOT": str(runner_root),
        # The git server's certificate is signed by the session's own CA.
        "CKRV_DISPATCHER_WORKLOAD_ENV": json.dumps(git.client_environment),
        "CKRV_RUNNER_SANDBOX_READ_ONLY_PATHS": json.dumps(
            [str(path) for path in workload_readable(git, repositories)]
        ),
        "CKRV_WATCHER_RECONCILE_INTERVAL_SECONDS": "1",
        # A dispatch left by a dispatcher that died is finished this soon by another.
        "CKRV_DISPATCHER_DISPATCH_LEASE_SECONDS": f"{DISPATCH_LEASE_SECONDS:g}",
        **(settings or {}),
    }
    # One folder of logs per replica: the processes of a service share its log's name.
    log_dirs = [base / "services" / f"replica-{number}" for number in range(1, replicas + 1)]
    gateway_dirs = [base / "services" / f"gateway-{number}" for number in range(1, gateways + 1)]
    # Replicas of one deployment share the keys that sign their tokens.
    signing_jwks = json.dumps({"keys": [generate_signing_key()]})
    # The gateways on the services' connections: they serve the results the services stored.
    fronts = [
        gateway_process(
            nats_url=nats.url,
            database_url=database_url,
            log_dir=log_dir,
            switches=environment,
            signing_jwks=signing_jwks,
        )
        for log_dir in gateway_dirs
    ]
    processes = {
        "gateway": [process for process, _ in fronts],
        **{
            name: [service_process(name, log_dir, environment) for log_dir in log_dirs]
            for name in services
        },
    }
    everything = [process for replicas_of in processes.values() for process in replicas_of]
    try:
        # The gateways first: they make the streams the services' consumers follow.
        await asyncio.gather(*(process.start() for process in processes["gateway"]))
        await asyncio.gather(*(process.start() for name in services for process in processes[name]))
        yield Execution(
            [running for _, running in fronts],
            nats.url,
            database_url,
            runner_root,
            processes,
            git,
            repositories,
        )
    finally:
        await asyncio.gather(*(process.stop() for process in everything))
        # Workloads outlive the services by design; the tests' must not outlive the tests.
        async with LocalRunner(runner_root) as runner:
            await asyncio.gather(*(runner.delete(status.name) for status in await runner.list()))
        await nats.stop()


@pytest.fixture(scope="module")
async def execution(
    execution_dir: Path,
    postgres_server: PostgresServer,
    s3_server: SeaweedServer,
    git_http_server: GitHttpServer,
    git_repositories: Path,
) -> AsyncIterator[Execution]:
    async with started_execution(
        execution_dir, postgres_server, s3_server, git_http_server, git_repositories
    ) as execution:
        yield execution
