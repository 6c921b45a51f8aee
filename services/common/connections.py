"""Connections to the shared infrastructure (NATS, PostgreSQL), and the readiness checks on them."""

from __future__ import annotations

import logging
from collections.abc import Callable

import nats
from nats.aio.client import Client
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from ckrv.services.common.http import ReadinessCheck

logger = logging.getLogger(__name__)


async def connect_nats(url: str, *, name: str) -> Client:
    """Connect with endless reconnects: a NATS restart pauses a service, it does not end it."""

    async def on_disconnect() -> None:
        logger.warning("NATS disconnected")

    async def on_reconnect() -> None:
        logger.info("NATS reconnected")

    async def on_error(error: Exception) -> None:
        logger.error("NATS error: %s", error)

    return await nats.connect(
        servers=[server.strip() for server in url.split(",")],
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        error_cb=on_error,
    )


def connection_checks(
    nats_client: Callable[[], Client | None], engine: Callable[[], AsyncEngine | None]
) -> dict[str, ReadinessCheck]:
    """/readyz checks of a service's NATS connection and database (looked up when checked)."""

    async def nats_connected() -> None:
        client = nats_client()
        if client is None or not client.is_connected:
            raise ConnectionError("not connected to NATS")

    async def database_reachable() -> None:
        current = engine()
        if current is None:
            raise ConnectionError("no database engine")
        async with current.connect() as connection:
            await connection.execute(text("select 1"))

    return {"nats": nats_connected, "database": database_reachable}
