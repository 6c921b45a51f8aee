"""What the stack sets up once its servers run: streams, database schema, bucket expiry rule.

Every step is idempotent, so they all run on every start; the S3 bucket itself is
made by `SeaweedServer`.
"""

from __future__ import annotations

import asyncio

import nats
from minio import Minio

from ckrv.events.streams import provision_streams
from ckrv.services.artifacts.lifecycle import ensure_results_lifecycle
from ckrv.services.common.db import create_schema


async def provision(
    nats_url: str, database_url: str, storage: Minio, bucket: str
) -> dict[str, str]:
    """Set everything up; what happened to each stream (created, updated, unchanged)."""
    client = await nats.connect(nats_url, name="ckrv-stack")
    try:
        outcomes = await provision_streams(client.jetstream())
    finally:
        await client.close()
    await create_schema(database_url)
    await asyncio.to_thread(ensure_results_lifecycle, storage, bucket)
    return {stream: str(outcome) for stream, outcome in outcomes.items()}
