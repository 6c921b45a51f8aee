"""What the stack sets up once its servers run: JetStream streams and the database schema.

Both steps are idempotent, so they run on every start; the S3 bucket is made by
`SeaweedServer` itself.
"""

from __future__ import annotations

import nats

from ckrv.events.streams import provision_streams
from ckrv.services.common.db import create_schema


async def provision(nats_url: str, database_url: str) -> dict[str, str]:
    """Create or update the streams, create missing tables; what happened to each stream."""
    client = await nats.connect(nats_url, name="ckrv-stack")
    try:
        outcomes = await provision_streams(client.jetstream())
    finally:
        await client.close()
    await create_schema(database_url)
    return {stream: str(outcome) for stream, outcome in outcomes.items()}
