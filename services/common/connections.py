"""Connections to the shared infrastructure (NATS), named after the service that holds them."""

from __future__ import annotations

import logging

import nats
from nats.aio.client import Client

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
