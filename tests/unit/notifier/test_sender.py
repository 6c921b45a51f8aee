"""Sending one webhook: what comes back, and where the connection goes (to the checked address).

Receivers are small HTTP servers on loopback. Name lookups are answered by a
`getaddrinfo` replaced at the boundary, so a name can change its answer between
the check and the connection, as DNS rebinding does.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from ckrv.services.notifier.addresses import check_webhook_url
from ckrv.services.notifier.sender import WebhookSender
from ckrv.services.stack.ports import free_ports
from tests.webhook_receiver import Received, WebhookReceiver, always

BODY = b'{"type":"webhook.ping"}'
HEADERS = {"Content-Type": "application/json", "webhook-id": "msg_1"}


@asynccontextmanager
async def open_sender(*, cloud: bool, within: float = 5.0) -> AsyncIterator[WebhookSender]:
    sender = WebhookSender(cloud=cloud, timeout_seconds=within, max_connections=8)
    await sender.open()
    try:
        yield sender
    finally:
        await sender.close()


class ChangingResolver:
    """A `getaddrinfo` whose answers for one name come from a list, the last one repeated."""

    def __init__(self, name: str, *answers: str) -> None:
        self.name = name
        self.answers = list(answers)
        self.lookups = 0
        self._real = socket.getaddrinfo

    def __call__(self, host: str, port: int, *args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        if host != self.name:
            return list(self._real(host, port, *args, **kwargs))
        answer = self.answers[min(self.lookups, len(self.answers) - 1)]
        self.lookups += 1
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answer, port))]


async def test_an_answer_is_taken_as_it_comes() -> None:
    async with WebhookReceiver() as receiver, open_sender(cloud=False) as sender:
        outcome = await sender.post(receiver.url, BODY, HEADERS)
    assert (outcome.status_code, outcome.error, outcome.succeeded) == (200, None, True)
    assert outcome.latency_ms > 0
    (received,) = receiver.received
    assert received.body == BODY
    assert received.headers["webhook-id"] == "msg_1"
    assert received.headers["user-agent"] == "ckrv-webhooks/1"


async def test_a_refusal_keeps_the_start_of_its_body() -> None:
    async with WebhookReceiver(always(503)) as receiver, open_sender(cloud=False) as sender:
        outcome = await sender.post(receiver.url, BODY, HEADERS)
    assert (outcome.status_code, outcome.succeeded) == (503, False)
    assert outcome.error == "HTTP 503 Service Unavailable: receiver says no"


async def test_no_answer_in_time_is_a_timeout() -> None:
    release = asyncio.Event()

    async def hang(_: int, __: Received) -> int:
        await release.wait()
        return 200

    async with WebhookReceiver(hang) as receiver, open_sender(cloud=False, within=0.3) as sender:
        outcome = await sender.post(receiver.url, BODY, HEADERS)
        release.set()
    assert (outcome.status_code, outcome.error) == (None, "no answer within 0.3 s")


async def test_nobody_listening_is_a_connection_error() -> None:
    (port,) = free_ports(1)
    async with open_sender(cloud=False) as sender:
        outcome = await sender.post(f"http://127.0.0.1:{port}/hook", BODY, HEADERS)
    assert outcome.status_code is None
    assert outcome.error is not None
    assert outcome.error.startswith("cannot connect:")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://8.8.8.8/hook", "not sent: must be an https URL"),
        ("https://127.0.0.1:9/hook", "not sent: 127.0.0.1 is not a public address"),
        ("https://[fd00::1]:9/hook", "not sent: fd00::1 is not a public address"),
    ],
)
async def test_the_cloud_sends_nothing_to_a_url_it_would_not_save(url: str, reason: str) -> None:
    async with open_sender(cloud=True) as sender:
        outcome = await sender.post(url, BODY, HEADERS)
    assert (outcome.status_code, outcome.error) == (None, reason)


async def test_a_name_rebound_to_loopback_after_the_check_gets_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with WebhookReceiver() as receiver:
        url = f"https://hooks.rebinding.test:{receiver.port}/hook"
        resolver = ChangingResolver("hooks.rebinding.test", "93.184.215.14", "127.0.0.1")
        monkeypatch.setattr(socket, "getaddrinfo", resolver)

        await check_webhook_url(url, cloud=True)  # public when the endpoint was saved
        async with open_sender(cloud=True) as sender:
            outcome = await sender.post(url, BODY, HEADERS)

    assert resolver.lookups == 2
    assert outcome.status_code is None
    assert outcome.error == (
        "not sent: hooks.rebinding.test resolves to 127.0.0.1, which is not a public address"
    )
    assert receiver.received == []


async def test_the_connection_goes_to_the_address_the_lookup_gave(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with WebhookReceiver() as receiver:
        # Answered with the receiver's address once; a second lookup would go nowhere.
        resolver = ChangingResolver("hooks.pinned.test", "127.0.0.1", "192.0.2.1")
        monkeypatch.setattr(socket, "getaddrinfo", resolver)
        async with open_sender(cloud=False, within=2.0) as sender:
            outcome = await sender.post(
                f"http://hooks.pinned.test:{receiver.port}/hook", BODY, HEADERS
            )

    assert (outcome.status_code, resolver.lookups) == (200, 1)
    (received,) = receiver.received
    assert received.headers["host"] == f"hooks.pinned.test:{receiver.port}"
