"""An attempt's whole log in object storage: its entries as published on LOGS, one JSON per line.

The archive is read back from the stream rather than rebuilt from the output, so it
holds exactly the messages followers received (same timestamps, same masking), and
writing it again after a crash gives the same bytes, the same digest and hence the
same `job.artifact-stored` event.
"""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
from collections.abc import AsyncIterator
from typing import BinaryIO, cast
from uuid import UUID

from minio import Minio
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError

from ckrv.events.catalog import JobArtifactStoredData
from ckrv.events.subjects import LOGS_STREAM, job_log_subject
from ckrv.schemas.logs import LogEntry
from ckrv.services.common.storage import artifact_key

LOG_ARCHIVE_NAME = "logs.jsonl"
# Logs up to this size are assembled in memory; longer ones in a temporary file.
SPOOL_MEMORY_BYTES = 8 * 1024 * 1024


async def last_published_seq(js: JetStreamContext, job_id: UUID) -> int:
    """The `seq` of the job's last published entry; 0 before the first."""
    try:
        last = await js.get_last_msg(LOGS_STREAM, job_log_subject(job_id))
    except NotFoundError:
        return 0
    assert last.data is not None
    return LogEntry.model_validate_json(last.data).seq


async def published_entries(
    js: JetStreamContext, job_id: UUID, attempt: int, *, reply_timeout: float
) -> AsyncIterator[bytes]:
    """The messages of the job's log written by `attempt`, in stream order."""
    subject = job_log_subject(job_id)
    try:
        last = await js.get_last_msg(LOGS_STREAM, subject)
    except NotFoundError:
        return
    assert last.seq is not None
    subscription = await js.subscribe(
        subject, stream=LOGS_STREAM, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
    )
    try:
        while True:
            message = await subscription.next_msg(timeout=reply_timeout)
            if LogEntry.model_validate_json(message.data).attempt == attempt:
                yield message.data
            if message.metadata.sequence.stream >= last.seq:
                return
    finally:
        await subscription.unsubscribe()


async def archive_attempt_log(
    js: JetStreamContext,
    storage: Minio,
    bucket: str,
    job_id: UUID,
    attempt: int,
    *,
    reply_timeout: float,
) -> JobArtifactStoredData:
    """Store the attempt's log at `jobs/<job_id>/<attempt>/logs.jsonl`; what to record of it."""
    key = artifact_key(job_id, attempt, LOG_ARCHIVE_NAME)
    digest = hashlib.sha256()
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES) as content:
        async for message in published_entries(js, job_id, attempt, reply_timeout=reply_timeout):
            line = message + b"\n"
            digest.update(line)
            content.write(line)
        size = content.tell()
        content.seek(0)
        # Minio only reads from it, as it would from any binary file.
        await asyncio.to_thread(_upload, storage, bucket, key, cast(BinaryIO, content), size)
    return JobArtifactStoredData(
        attempt=attempt, name=LOG_ARCHIVE_NAME, key=key, size_bytes=size, sha256=digest.hexdigest()
    )


def _upload(storage: Minio, bucket: str, key: str, content: BinaryIO, size: int) -> None:
    storage.put_object(bucket, key, content, size, content_type="application/x-ndjson")
