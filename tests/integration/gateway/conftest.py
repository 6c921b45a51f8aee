"""Clients of the session's gateway process, one fresh user each."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from uuid import uuid4

import httpx
import pytest

from tests.running_gateway import RunningGateway

ClientFactory = Callable[..., httpx.Client]


@pytest.fixture
def client_for(gateway: RunningGateway) -> Iterator[ClientFactory]:
    """`client_for(tier="free")`: an HTTP client signed in as a new user of that tier."""
    clients: list[httpx.Client] = []

    def make(tier: str = "free", email: str | None = None) -> httpx.Client:
        email = email or f"user-{uuid4().hex[:12]}@example.com"
        client = httpx.Client(
            base_url=gateway.api_url,
            headers={"Authorization": f"Bearer {gateway.token(email, tier)}"},
            timeout=30,
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(client_for: ClientFactory) -> httpx.Client:
    return client_for()
