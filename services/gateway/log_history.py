"""A job's log as stored: its lines on the LOGS stream, or its archive once they aged out.

Lines are read from LOGS with direct gets filtered on `logs.<job_id>`, a batch
per request, so a reader pulls at its own pace and holds one batch at a time.
Positions are stream sequences; a line's `seq` (its number in the job's log)
grows with them, so the first line after a given `seq` is found by bisecting
the stream. After the LOGS retention, the job's lines are read from the JSONL
archive the artifacts service stores per attempt.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from minio import Minio
from minio.error import S3Error
from nats.aio.client import Client
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from ckrv.events.catalog import JobArtifactStoredData
from ckrv.events.subjects import LOGS_STREAM, job_log_subject
from ckrv.schemas.logs import LogEntry
from ckrv.services.log_relay.archive import LOG_ARCHIVE_NAME

logger = logging.getLogger(__name__)

DIRECT_GET_SUBJECT = f"$JS.API.DIRECT.GET.{LOGS_STREAM}"
END_OF_BATCH = "204"
NOT_FOUND = "404"
# A batch stops at about this many bytes too: lines can be up to 16 KiB each.
BATCH_MAX_BYTES = 1024 * 1024


class LogReadError(Exception):
    """LOGS answered a read with something other than messages."""


@dataclass(frozen=True)
class StoredLine:
    """One line of a job's log as stored: its LOGS sequence (none in the archive) and its JSON."""

    sequence: int | None
    data: bytes

    @property
    def seq(self) -> int:
        """The line's number in the job's log (`LogEntry.seq`); 0 if it has none."""
        return entry_seq(self.data)


@dataclass(frozen=True)
class LineBatch:
    lines: list[StoredLine]
    # Whether LOGS holds more of the job's lines after the last one.
    more: bool


def entry_seq(data: bytes) -> int:
    try:
        value: Any = json.loads(data).get("seq")
    except (ValueError, AttributeError):
        return 0
    return value if isinstance(value, int) else 0


class LogLines:
    """The job logs on the LOGS stream."""

    def __init__(self, nc: Client, *, timeout: float = 5.0) -> None:
        self._nc = nc
        self._jsm = nc.jetstream()
        self._timeout = timeout

    async def read(
        self, job_id: UUID, from_sequence: int, limit: int, *, max_bytes: int = BATCH_MAX_BYTES
    ) -> LineBatch:
        """Up to `limit` of the job's lines (and about `max_bytes`) from `from_sequence` on."""
        request = {
            "seq": max(from_sequence, 1),
            "next_by_subj": job_log_subject(job_id),
            "batch": limit,
            "max_bytes": max_bytes,
        }
        inbox = self._nc.new_inbox()
        subscription = await self._nc.subscribe(inbox)
        lines: list[StoredLine] = []
        try:
            await self._nc.publish(DIRECT_GET_SUBJECT, json.dumps(request).encode(), reply=inbox)
            while True:
                message = await subscription.next_msg(timeout=self._timeout)
                headers = message.headers or {}
                status = headers.get("Status")
                if status == NOT_FOUND:
                    return LineBatch(lines, more=False)
                if status == END_OF_BATCH:
                    return LineBatch(lines, more=int(headers.get("Nats-Num-Pending", "0")) > 0)
                if status is not None:
                    raise LogReadError(
                        f"reading the log of job {job_id}: status {status} "
                        f"{headers.get('Description')}"
                    )
                lines.append(StoredLine(int(headers["Nats-Sequence"]), message.data))
        finally:
            await subscription.unsubscribe()

    async def holds(self, job_id: UUID, sequence: int) -> bool:
        """Whether LOGS still holds the message at `sequence` and it is a line of this job."""
        try:
            message = await self._jsm.get_msg(LOGS_STREAM, seq=sequence, direct=True)
        except NotFoundError:
            return False
        return message.subject == job_log_subject(job_id)

    async def first(self, job_id: UUID) -> StoredLine | None:
        return await self._next(job_id, 1)

    async def last(self, job_id: UUID) -> StoredLine | None:
        try:
            message = await self._jsm.get_msg(
                LOGS_STREAM, subject=job_log_subject(job_id), direct=True
            )
        except NotFoundError:
            return None
        return _stored(message)

    async def position_after(self, job_id: UUID, after_seq: int) -> int:
        """The stream sequence to read from for the job's lines whose `seq` is above `after_seq`.

        When there is none yet, the sequence after the job's last line: reading on from
        there finds the lines still to come.
        """
        first = await self.first(job_id)
        if first is None:
            return 1
        assert first.sequence is not None
        if first.seq > after_seq:
            return first.sequence
        last = await self.last(job_id)
        assert last is not None
        assert last.sequence is not None
        if last.seq <= after_seq:
            return last.sequence + 1
        # The answer is in (first, last]: the smallest sequence whose next line is above.
        low, high = first.sequence + 1, last.sequence
        while low < high:
            middle = (low + high) // 2
            found = await self._next(job_id, middle)
            assert found is not None
            assert found.sequence is not None
            if found.seq > after_seq:
                high = middle
            else:
                low = found.sequence + 1
        found = await self._next(job_id, low)
        assert found is not None
        assert found.sequence is not None
        return found.sequence

    async def _next(self, job_id: UUID, sequence: int) -> StoredLine | None:
        try:
            message = await self._jsm.get_msg(
                LOGS_STREAM, seq=sequence, subject=job_log_subject(job_id), next=True, direct=True
            )
        except NotFoundError:
            return None
        return _stored(message)


def _stored(message: RawStreamMsg) -> StoredLine:
    assert message.seq is not None
    return StoredLine(message.seq, message.data or b"")


def log_archives(artifacts: Sequence[JobArtifactStoredData]) -> list[JobArtifactStoredData]:
    """The job's archived logs, one per attempt, in attempt order."""
    return sorted(
        (artifact for artifact in artifacts if artifact.name == LOG_ARCHIVE_NAME),
        key=lambda artifact: artifact.attempt,
    )


@dataclass(frozen=True)
class LogArchive:
    """The archived logs in object storage."""

    storage: Minio
    bucket: str

    async def read(self, archives: Sequence[JobArtifactStoredData]) -> list[StoredLine]:
        """Every line of the archived logs in `seq` order, each line once."""
        return await asyncio.to_thread(_read_archive, self.storage, self.bucket, archives)


def _read_archive(
    storage: Minio, bucket: str, archives: Sequence[JobArtifactStoredData]
) -> list[StoredLine]:
    by_seq: dict[int, StoredLine] = {}
    for archive in archives:
        try:
            response = storage.get_object(bucket, archive.key)
        except S3Error as error:
            if error.code != "NoSuchKey":
                raise
            # Deleted behind the job's back (its expiry is recorded once done): what is left.
            logger.warning("an archived log is missing", extra={"key": archive.key})
            continue
        try:
            for raw in response:
                line = raw.strip()
                if not line:
                    continue
                try:
                    entry = LogEntry.model_validate_json(line)
                except ValidationError:
                    logger.warning("skipped a malformed line", extra={"key": archive.key})
                    continue
                by_seq.setdefault(entry.seq, StoredLine(None, line))
        finally:
            response.close()
            response.release_conn()
    return [by_seq[seq] for seq in sorted(by_seq)]
