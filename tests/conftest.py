"""Real servers for the whole test session: NATS, PostgreSQL and SeaweedFS, on free ports.

Each starts the first time a test asks for it and stops when the session ends,
so a run of unit tests alone starts nothing. The servers are the local stack's
own classes. They hold nothing bound to an event loop, so the fixtures drive them
on a private loop and work whatever loop scope a test uses.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ckrv.services.common.db import create_schema
from ckrv.services.stack.nats_server import NatsServer
from ckrv.services.stack.ports import free_ports
from ckrv.services.stack.postgres_server import PostgresServer
from ckrv.services.stack.process import Supervised
from ckrv.services.stack.seaweed_server import SeaweedPorts, SeaweedServer
from tests.running_gateway import RunningGateway, gateway_process

T = TypeVar("T")


def run_on_private_loop(coroutine: Coroutine[Any, Any, T]) -> T:
    # Its own loop, never installed as the thread's current one: pytest-asyncio's stays as is.
    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
        return runner.run(coroutine)


def new_server_dir(prefix: str) -> Path:
    # Not under pytest's tmp_path: its root is private to the user (mode 0700), and
    # PostgreSQL runs as `nobody` when the tests run as root, so it must pass through.
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o711)
    return path


@pytest.fixture(scope="session")
def servers_dir() -> Iterator[Path]:
    """Where the session's servers keep their data."""
    path = new_server_dir("ckrv-test-servers-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def server_tmp_path() -> Iterator[Path]:
    """A fresh folder that a server running as `nobody` can use too."""
    path = new_server_dir("ckrv-test-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _serve(server: Supervised) -> Iterator[Any]:
    run_on_private_loop(server.start())
    try:
        yield server
    finally:
        run_on_private_loop(server.stop())


@pytest.fixture(scope="session")
def nats_server(servers_dir: Path) -> Iterator[NatsServer]:
    """A JetStream-enabled nats-server; `.url` is its client URL."""
    port, monitor_port = free_ports(2)
    yield from _serve(NatsServer(servers_dir / "nats", port=port, monitor_port=monitor_port))


@pytest.fixture(scope="session")
def postgres_server(servers_dir: Path) -> Iterator[PostgresServer]:
    """PostgreSQL with the `ckrv` database; `.dsn` is `postgresql://ckrv:<password>@...`."""
    (port,) = free_ports(1)
    yield from _serve(PostgresServer(servers_dir / "postgres", port=port))


@pytest.fixture(scope="session")
def s3_server(servers_dir: Path) -> Iterator[SeaweedServer]:
    """SeaweedFS S3 with its bucket made: `.endpoint`, `.access_key`, `.secret_key`,
    `.region`, `.bucket`, and `.client()` for a signed minio client."""
    yield from _serve(SeaweedServer(servers_dir / "seaweed", ports=SeaweedPorts.allocate()))


@pytest.fixture(scope="session")
def gateway(
    nats_server: NatsServer, postgres_server: PostgresServer, servers_dir: Path
) -> Iterator[RunningGateway]:
    run_on_private_loop(create_schema(postgres_server.dsn))
    process, running = gateway_process(
        nats_url=nats_server.url, database_url=postgres_server.dsn, log_dir=servers_dir
    )
    for _ in _serve(process):
        yield running


SERVER_FIXTURES = frozenset({"nats_server", "postgres_server", "s3_server", "gateway"})
SERVER_MARKERS = frozenset({"integration", "e2e"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses a real server must say so, so `-m "not integration"` stays server-free."""
    unmarked = [
        item.nodeid
        for item in items
        if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        and not SERVER_MARKERS.intersection(marker.name for marker in item.iter_markers())
    ]
    if unmarked:
        raise pytest.UsageError(
            "tests using a real server need @pytest.mark.integration or e2e: " + ", ".join(unmarked)
        )
