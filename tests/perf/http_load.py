"""A lean HTTP/1.1 load client: one keep-alive connection, requests encoded once.

The benchmarks share two cores with the servers they measure. A general client
(httpx) spends most of a millisecond of CPU per request, which the gateway then
lacks, and its own event-loop delays land in the measured latency. This client
writes a prepared request and reads the answer's status line, headers and body,
nothing more; it understands `Content-Length` bodies only, which is what the
gateway sends for JSON answers.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


class HttpLoadError(Exception):
    """The server answered something this client does not read (or closed the connection)."""


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class KeepAliveClient:
    """One connection to `base_url`'s host, sending `POST <path>` with a fixed JSON body."""

    def __init__(self, base_url: str, headers: dict[str, str]) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or parts.hostname is None or parts.port is None:
            raise ValueError(f"{base_url}: only http://host:port URLs")
        self._host, self._port = parts.hostname, parts.port
        self._prefix = parts.path.rstrip("/")
        self._headers = {"Host": f"{self._host}:{self._port}", **headers}
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    def prepare_post(self, path: str, body: Any) -> bytes:
        """The bytes of `POST path` with `body` as JSON, to send as often as wanted."""
        payload = json.dumps(body).encode()
        headers = {
            **self._headers,
            "Content-Type": "application/json",
            "Content-Length": str(len(payload)),
        }
        head = f"POST {self._prefix}{path} HTTP/1.1\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in headers.items()
        )
        return head.encode() + b"\r\n" + payload

    async def send(self, request: bytes) -> Answer:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
        assert self._reader is not None
        self._writer.write(request)
        head = await self._reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        length = None
        for line in header_lines:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        if length is None:
            raise HttpLoadError(f"no Content-Length in the answer: {status_line}")
        return Answer(int(status_line.split(" ", 2)[1]), await self._reader.readexactly(length))

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            await self._writer.wait_closed()
            self._writer = None
