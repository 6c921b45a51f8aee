"""What sign-in costs each request: access-token verification alone, and `GET /v1/users/me`
with 50 concurrent clients holding real access tokens."""

from __future__ import annotations

import asyncio
import time
from uuid import UUID, uuid4

import httpx

from ckrv.services.gateway.identity.keys import SigningKeys
from tests.perf.local_gateway import local_gateway
from tests.perf.report import BenchmarkResult, Figure, latency_figures

VERIFICATIONS = 5_000
CLIENTS = 50
REQUESTS = 5_000


def verification_cost(keys: SigningKeys) -> float:
    """Microseconds per verification of a current token."""
    token, _ = keys.issue(uuid4(), lifetime_seconds=900)
    keys.verify(token)
    started = time.perf_counter()
    for _ in range(VERIFICATIONS):
        keys.verify(token)
    return (time.perf_counter() - started) / VERIFICATIONS * 1e6


async def users_me_under_load(api_url: str, tokens: list[str]) -> tuple[float, list[float]]:
    latencies: list[float] = []
    remaining = REQUESTS

    async def client_loop(token: str) -> None:
        nonlocal remaining
        async with httpx.AsyncClient(
            base_url=api_url, headers={"Authorization": f"Bearer {token}"}, timeout=60
        ) as client:
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                response = await client.get("/users/me")
                latencies.append(time.perf_counter() - started)
                response.raise_for_status()

    started = time.perf_counter()
    await asyncio.gather(*(client_loop(token) for token in tokens))
    return REQUESTS / (time.perf_counter() - started), latencies


async def run() -> BenchmarkResult:
    async with local_gateway() as local:
        gateway = local.gateway
        keys = SigningKeys(gateway.signing_keys, issuer=gateway.url)
        microseconds = verification_cost(keys)
        # Access tokens as the device flow issues them, for users the gateway knows.
        tokens = []
        async with httpx.AsyncClient(base_url=gateway.api_url) as client:
            for number in range(CLIENTS):
                development = gateway.token(f"bench-{number}@example.com", "pro")
                me = await client.get(
                    "/users/me", headers={"Authorization": f"Bearer {development}"}
                )
                user_id = me.json()["id"]
                tokens.append(keys.issue(UUID(user_id), lifetime_seconds=900)[0])
        await users_me_under_load(gateway.api_url, tokens[:5])  # warm-up
        rate, latencies = await users_me_under_load(gateway.api_url, tokens)
    return BenchmarkResult(
        name="token_validation",
        description="Access-token verification; GET /v1/users/me, 50 clients, one gateway.",
        figures=[
            Figure("RS256 access token verification", microseconds, "µs", higher_is_better=False),
            Figure("users/me: requests/s", rate, "req/s"),
            *latency_figures("users/me: latency", latencies, None),
        ],
        parameters={"verifications": VERIFICATIONS, "clients": CLIENTS, "requests": REQUESTS},
    )
