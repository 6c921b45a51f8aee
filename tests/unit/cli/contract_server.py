"""A real HTTP server, in a thread, answering with canned bodies of the gateway's contract.

The outermost boundary for the CLI's unit tests: the CLI speaks real HTTP to it
over loopback, and the tests read back every request it received. The real
gateway is driven by tests/e2e/cli/.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.unit.cli.bodies import device_body

API_PREFIX = "/v1"


@dataclass(frozen=True)
class Reply:
    """One answer: a JSON body (or raw text), after an optional delay, or a dropped connection."""

    status: int = 200
    body: Any = None
    text: str | None = None
    content_type: str = "application/json"
    delay: float = 0.0
    drop: bool = False
    """Close the connection without answering, as a crashed or restarted server would."""


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any
    at: float = field(default_factory=time.monotonic)
    """When it arrived (`time.monotonic()`)."""


@dataclass
class ContractServer:
    """Replies are queued per `(method, path)`; the last one of a queue repeats."""

    port: int = 0
    received: list[Received] = field(default_factory=list)
    _replies: dict[tuple[str, str], deque[Reply]] = field(
        default_factory=lambda: defaultdict(deque)
    )
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{API_PREFIX}"

    def reply(self, method: str, path: str, *replies: Reply) -> None:
        """Answer `method` on `path` (below /v1, e.g. `/jobs`) with `replies` in turn."""
        with self._lock:
            self._replies[(method, API_PREFIX + path)].extend(replies)

    def device_flow(self, *token_replies: Reply, interval: float, expires_in: float) -> None:
        """Script a device authorization: `POST /auth/device`, then `token_replies` to the polls."""
        self.reply(
            "POST",
            "/auth/device",
            Reply(200, device_body(interval=interval, expires_in=expires_in)),
        )
        self.reply("POST", "/auth/token", *token_replies)

    def requests_to(self, method: str, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if (r.method, r.path) == (method, API_PREFIX + path)]

    def next_reply(self, request: Received) -> Reply:
        with self._lock:
            self.received.append(request)
            queue = self._replies.get((request.method, request.path))
            if not queue:
                return Reply(404, {"error": "not_found", "message": f"{request.path} not found"})
            return queue.popleft() if len(queue) > 1 else queue[0]


def _handler(server: ContractServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            # Headers and body go out in separate writes: without this, Nagle's algorithm
            # holds the body of every keep-alive answer ~40 ms for the client's delayed ACK.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def do_GET(self) -> None:
            self._answer()

        def do_POST(self) -> None:
            self._answer()

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            url = urlsplit(self.path)
            request = Received(
                method=self.command,
                path=url.path,
                query=parse_qs(url.query),
                headers={name.lower(): value for name, value in self.headers.items()},
                body=json.loads(raw) if raw else None,
            )
            reply = server.next_reply(request)
            if reply.delay:
                time.sleep(reply.delay)
            if reply.drop:
                self.close_connection = True
                return
            text = reply.text if reply.text is not None else json.dumps(reply.body)
            payload = text.encode()
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    return Handler


class _QuietHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (a timeout test) leaves a broken pipe: expected, not news.
        pass


class RunningContractServer:
    """Starts a `ContractServer` on a free loopback port; `stop()` ends it."""

    def __init__(self) -> None:
        self.server = ContractServer()
        self._http = _QuietHTTPServer(("127.0.0.1", 0), _handler(self.server))
        self.server.port = self._http.server_address[1]
        self._thread = threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(timeout=5)
