"""What sign-in costs each request: access-token verification alone, on a client's first
request with a new token (the RS256 check) and on its repeats (remembered), and
`GET /v1/users/me` with 50 concurrent clients holding real access tokens."""

from __future__ import annotations

import asyncio
import time
from uuid import UUID, uuid4

import httpx

from ckrv.services.gateway.identity.keys import SigningKeys
from tests.perf.local_gateway import local_gateway
from tests.perf.report import BenchmarkResult, Figure, latency_figures

FIRST_VERIFICATIONS = 2_000
REPEAT_VERIFICATIONS = 5_000
CLIENTS = 50
REQUESTS = 5_000


def first_verification_cost(keys: SigningKeys) -> float:
    """Microseconds to verify a token never seen before: the signature and claims are checked."""
    # Signing is the issuer's cost, not the request's: the tokens are made before timing.
    tokens = [keys.issue(uuid4(), lifetime_seconds=900)[0] for _ in range(FIRST_VERIFICATIONS)]
    started = time.perf_counter()
    for token in tokens:
        keys.verify(token)
    return (time.perf_counter() - started) / FIRST_VERIFICATIONS * 1e6


def repeat_verification_cost(keys: SigningKeys) -> float:
    """Microseconds to verify a token already verified once (the remembered claims)."""
    token, _ = keys.issue(uuid4(), lifetime_seconds=900)
    keys.verify(token)
    started = time.perf_counter()
    for _ in range(REPEAT_VERIFICATIONS):
        keys.verify(token)
    return (time.perf_counter() - started) / REPEAT_VERIFICATIONS * 1e6


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
        first_microseconds = first_verification_cost(keys)
        repeat_microseconds = repeat_verification_cost(keys)
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
        description=(
            "Access-token verification, new and repeat tokens;"
            " GET /v1/users/me, 50 clients, one gateway."
        ),
        figures=[
            Figure(
                "access token verification, new token (RS256)",
                first_microseconds,
                "µs",
                higher_is_better=False,
            ),
            Figure(
                "access token verification, repeat token (remembered)",
                repeat_microseconds,
                "µs",
                higher_is_better=False,
            ),
            Figure("users/me: requests/s", rate, "req/s"),
            *latency_figures("users/me: latency", latencies, None),
        ],
        parameters={
            "first_verifications": FIRST_VERIFICATIONS,
            "repeat_verifications": REPEAT_VERIFICATIONS,
            "clients": CLIENTS,
            "requests": REQUESTS,
        },
    )
