"""The artifacts service (`ckrv-cloud serve artifacts`): the retention janitor's connections.

Upload URLs and verification run where they are needed (the dispatcher signs, the
watcher verifies before a job succeeds); this process keeps the results' retention.
"""

from __future__ import annotations

from ckrv.events.catalog import parse_event
from ckrv.events.consumer import EventConsumer
from ckrv.services.artifacts.janitor import Janitor, janitor_spec
from ckrv.services.artifacts.settings import ArtifactsSettings
from ckrv.services.common.event_service import Concurrently, Connections, Work
from ckrv.services.common.storage import storage_client


async def artifacts_work(connections: Connections, settings: ArtifactsSettings) -> Work:
    """The janitor's work: following job ends, and expiring results when due."""
    janitor = Janitor(
        settings=settings,
        sessions=connections.sessions,
        store=connections.store,
        storage=storage_client(connections.common),
        bucket=connections.common.s3_bucket,
    )
    consumer = EventConsumer(
        connections.nats.jetstream(), janitor_spec(), parse_event, janitor.handle
    )
    return Concurrently(consumer.run, janitor.expire_until)
