"""Jobs that really run: a gateway, the dispatcher and the watcher on servers of their own.

The module's services get a nats-server and a database of their own (on the
session's PostgreSQL), so the session's other jobs never reach this dispatcher,
and the session's SeaweedFS for results. Workloads run `ckrv-worker` on the local
runner, sandboxed when bubblewrap is there, and clone from the session's git servers.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
from sqlalchemy import text

from ckrv.services.common.db import create_schema
from ckrv.services.common.event_service import Connections, connected
from ckrv.services.common.settings import DEVELOPMENT_CREDENTIAL_KEYS, CommonSettings
from ckrv.services.dispatcher.service import Dispatcher
from ckrv.services.dispatcher.settings import DispatcherSettings
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
from tests.running_gateway import RunningGateway, started_gateway

__all__ = ["git_http_server", "git_repositories", "git_ssh_server"]

TERMINAL = {"succeeded", "failed", "timeout", "cancelled"}


@dataclass
class Execution:
    """The module's services, and what tests need to drive them as users do."""

    gateway: RunningGateway
    nats_url: str
    database_url: str
    runner_root: Path
    services: dict[str, ServiceProcess]
    git: GitHttpServer
    repositories: Path

    def client(self, tier: str = "pro") -> httpx.Client:
        """An API client of a new user of `tier`."""
        token = self.gateway.token(f"runner-{uuid4().hex[:12]}@example.com", tier)
        return httpx.Client(
            base_url=self.gateway.api_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )

    def repository(self) -> str:
        """The https URL of a fresh sample repository on the session's git server."""
        sample = create_sample_repository(self.repositories, f"sample-{uuid4().hex[:8]}")
        return self.git.url_for(sample.path)

    def runner(self, kind: type[LocalRunner] = LocalRunner) -> LocalRunner:
        """A runner over the module's workloads, set up as the module's services are."""
        return kind(self.runner_root, sandbox_read_only_paths=[self.git.tls.ca_certificate.parent])


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
        settings=DispatcherSettings(workload_env=execution.git.client_environment),
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


@pytest.fixture(scope="module")
async def execution(
    execution_dir: Path,
    postgres_server: PostgresServer,
    s3_server: SeaweedServer,
    git_http_server: GitHttpServer,
    git_repositories: Path,
) -> AsyncIterator[Execution]:
    port, monitor_port = free_ports(2)
    nats = NatsServer(execution_dir / "nats", port=port, monitor_port=monitor_port)
    await nats.start()
    database = f"execution_{uuid4().hex[:12]}"
    async with postgres_server.connect("postgres") as connection:
        await connection.execute(text(f'CREATE DATABASE "{database}"'))
    database_url = postgres_server.dsn.rsplit("/", 1)[0] + f"/{database}"
    await create_schema(database_url)
    runner_root = execution_dir / "runner"
    environment = {
        **connection_environment(
            nats, postgres_server, s3_server, credential_keys=DEVELOPMENT_CREDENTIAL_KEYS
        ),
        "CKRV_DATABASE_URL": database_url,
        "CKRV_RUNNER_ROOT": str(runner_root),
        # The git server's certificate is signed by the session's own CA.
        "CKRV_DISPATCHER_WORKLOAD_ENV": json.dumps(git_http_server.client_environment),
        "CKRV_RUNNER_SANDBOX_READ_ONLY_PATHS": json.dumps(
            [str(git_http_server.tls.ca_certificate.parent)]
        ),
        "CKRV_WATCHER_RECONCILE_INTERVAL_SECONDS": "1",
    }
    services = {
        name: service_process(name, execution_dir / "services", environment)
        for name in ("dispatcher", "watcher", "log-relay")
    }
    try:
        # The gateway on the services' connections: it serves the results they stored.
        async with started_gateway(
            nats_url=nats.url, database_url=database_url, switches=environment
        ) as gateway:
            for service in services.values():
                await service.start()
            yield Execution(
                gateway,
                nats.url,
                database_url,
                runner_root,
                services,
                git_http_server,
                git_repositories,
            )
    finally:
        for service in services.values():
            await service.stop()
        # Workloads outlive the services by design; the tests' must not outlive the tests.
        async with LocalRunner(runner_root) as runner:
            await asyncio.gather(*(runner.delete(status.name) for status in await runner.list()))
        await nats.stop()
