"""PostgresServer: initialises once, password auth over TCP, keeps data, stops without survivors."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import asyncpg
import pytest

from ckrv.services.stack.ports import free_ports, is_port_free
from ckrv.services.stack.postgres_server import PostgresServer
from tests.processes import process_tree, survivors

pytestmark = pytest.mark.integration


def owner_uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


async def test_password_auth_persistence_and_a_clean_stop(server_tmp_path: Path) -> None:
    (port,) = free_ports(1)
    server = PostgresServer(server_tmp_path / "postgres", port=port)
    await server.start()
    try:
        assert server.dsn.startswith(f"postgresql://ckrv:{server.password}@127.0.0.1:{port}/ckrv")
        assert stat.S_IMODE(server.password_path.stat().st_mode) == 0o600
        connection = await asyncpg.connect(server.dsn)
        try:
            assert await connection.fetchval("select 1") == 1
            assert await connection.fetchval("select current_database()") == "ckrv"
            await connection.execute("create table kept (value text)")
            await connection.execute("insert into kept values ('survives a restart')")
        finally:
            await connection.close()
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(
                host="127.0.0.1", port=port, user="ckrv", password="wrong", database="ckrv"
            )
        assert server.process is not None
        assert server.process.pid is not None
        if os.geteuid() == 0:
            assert owner_uid(server.process.pid) != 0
        running = process_tree(server.process.pid)
        # The postmaster and its helpers (checkpointer, walwriter, ...), each in its own session.
        assert len(running) > 1
    finally:
        await server.stop()
    assert server.process.returncode == 0
    assert survivors(running) == set()
    assert is_port_free(port)

    password = server.password
    again = PostgresServer(server_tmp_path / "postgres", port=port)
    await again.start()
    try:
        assert again.password == password
        connection = await asyncpg.connect(again.dsn)
        try:
            assert await connection.fetchval("select value from kept") == "survives a restart"
        finally:
            await connection.close()
    finally:
        await again.stop()


async def test_session_server_is_usable(postgres_server: PostgresServer) -> None:
    connection = await asyncpg.connect(postgres_server.dsn)
    try:
        assert await connection.fetchval("select 1") == 1
    finally:
        await connection.close()
