"""Job results in object storage as the API hands them out: streamed, or by a presigned URL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

from minio import Minio
from minio.error import S3Error
from urllib3 import BaseHTTPResponse

CHUNK_BYTES = 256 * 1024
_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchObject"})


class ArtifactMissing(Exception):
    """Storage has no object where an artifact was recorded."""


@dataclass(frozen=True)
class OpenedArtifact:
    """A stored object whose answer has begun: its size, and its bytes as they are read."""

    size: int | None
    chunks: AsyncIterator[bytes]


@dataclass(frozen=True)
class ArtifactStore:
    storage: Minio
    bucket: str

    async def open(self, key: str) -> OpenedArtifact:
        """The object at `key`, asked for before anything is sent to the caller, so a missing
        one is an error answer rather than a stream cut short."""
        try:
            response = await asyncio.to_thread(self.storage.get_object, self.bucket, key)
        except S3Error as error:
            if error.code in _MISSING_CODES:
                raise ArtifactMissing(key) from error
            raise
        length = response.headers.get("Content-Length")
        return OpenedArtifact(int(length) if length else None, _chunks(response))

    def download_url(self, key: str, valid_for: timedelta) -> str:
        """A presigned GET URL of `key`; signing is local computation (the client knows its
        region), so this never waits on the network."""
        return self.storage.presigned_get_object(self.bucket, key, expires=valid_for)


async def _chunks(response: BaseHTTPResponse) -> AsyncIterator[bytes]:
    try:
        stream = response.stream(CHUNK_BYTES)
        while chunk := await asyncio.to_thread(next, stream, b""):
            yield chunk
    finally:
        response.close()
        response.release_conn()
