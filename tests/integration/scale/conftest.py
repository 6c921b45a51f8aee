"""Services as several replicas: the execution tests' stack, with two of everything.

`execution` is the execution tests' stack (one replica of each service), for tests
that drive replicas in the test's process; `scale` starts two gateways and two
replicas of every service beside them, with the limits and timings the
horizontal-scale test needs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ckrv.services.stack.postgres_server import PostgresServer
from ckrv.services.stack.seaweed_server import SeaweedServer
from tests.git_servers import GitHttpServer, git_http_server, git_repositories
from tests.integration.execution.conftest import (
    Execution,
    execution,
    execution_dir,
    started_execution,
)

__all__ = ["execution", "execution_dir", "git_http_server", "git_repositories"]

EVERY_SERVICE = ("dispatcher", "watcher", "log-relay", "artifacts", "notifier")
REPLICAS = 2
SCALE_SETTINGS = {
    # Workloads at once: as many as two busy cores run without starving the services.
    "CKRV_DISPATCHER_CAPACITY": "40",
    # What a killed replica held is taken over within seconds: its deliveries' leases
    # (the attempt's timeout and 5 s) and its followed workloads' leases.
    "CKRV_NOTIFIER_ATTEMPT_TIMEOUT_SECONDS": "5",
    "CKRV_LOG_RELAY_LEASE_TTL_SECONDS": "3",
    # The local runner's watchers and output followers read every workload's folder each
    # time they look: with hundreds of workloads, looking less often leaves the cores to them.
    "CKRV_RUNNER_POLL_INTERVAL_SECONDS": "0.5",
    "CKRV_WATCHER_RECONCILE_INTERVAL_SECONDS": "5",
}


@pytest.fixture(scope="module")
async def scale(
    execution_dir: Path,
    postgres_server: PostgresServer,
    s3_server: SeaweedServer,
    git_http_server: GitHttpServer,
    git_repositories: Path,
) -> AsyncIterator[Execution]:
    """Two gateways, and two replicas of every service, on servers of their own."""
    async with started_execution(
        execution_dir,
        postgres_server,
        s3_server,
        git_http_server,
        git_repositories,
        services=EVERY_SERVICE,
        replicas=REPLICAS,
        gateways=REPLICAS,
        settings=SCALE_SETTINGS,
    ) as stack:
        yield stack
