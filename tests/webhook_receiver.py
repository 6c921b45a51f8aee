"""A webhook receiver for the tests: a small HTTP server on loopback that keeps what it gets.

Each request is kept with the status it was answered with; `verify` checks one
with the Standard Webhooks reference library (`standardwebhooks` from PyPI), as
a receiver in the wild would.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import web
from standardwebhooks import Webhook

from ckrv.services.stack.ports import free_ports


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    answered: int

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    def payload(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.body)
        return document

    def verify(self, secret: str) -> dict[str, Any]:
        """The payload, once the reference library accepted the signature (else it raises)."""
        payload: dict[str, Any] = Webhook(secret).verify(self.body, self.headers)
        return payload


# The status to answer a request with, given how many earlier ones had its webhook-id, and
# the request (its `answered` not yet known).
Answer = Callable[[int, Received], Awaitable[int]]


def always(status: int) -> Answer:
    async def answer(_: int, __: Received) -> int:
        return status

    return answer


def failing_first(failures: int, status: int = 500) -> Answer:
    """Each message's first `failures` attempts get `status`, the next ones 200."""

    async def answer(earlier: int, _: Received) -> int:
        return status if earlier < failures else 200

    return answer


@dataclass
class WebhookReceiver:
    answer: Answer = field(default_factory=lambda: always(200))
    received: list[Received] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0
    _runner: web.AppRunner | None = None
    _port: int = 0
    _seen: Counter[str] = field(default_factory=Counter)

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}/hook"

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        (self._port,) = free_ports(1)
        await web.TCPSite(self._runner, "127.0.0.1", self._port).start()
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        headers = {name.lower(): value for name, value in request.headers.items()}
        arrived = Received(headers, await request.read(), answered=0)
        earlier = self._seen[arrived.webhook_id]
        self._seen[arrived.webhook_id] += 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            status = await self.answer(earlier, arrived)
        finally:
            self.in_flight -= 1
        self.received.append(dataclasses.replace(arrived, answered=status))
        return web.Response(status=status, text="" if status < 300 else "receiver says no")

    def of(self, webhook_id: str) -> list[Received]:
        return [received for received in self.received if received.webhook_id == webhook_id]

    def confirmed(self) -> list[Received]:
        return [received for received in self.received if 200 <= received.answered < 300]

    async def wait_for(
        self, condition: Callable[[], bool], what: str, within: float = 30.0
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not condition():
            assert loop.time() < deadline, f"{what}: not within {within} s; got {self.received}"
            await asyncio.sleep(0.01)
