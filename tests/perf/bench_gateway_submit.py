"""`POST /v1/jobs` on one gateway process: submissions/s, latency, and the projector's lag.

The gateway runs as `ckrv-cloud serve gateway` on its own nats-server and
PostgreSQL (loopback, as the local stack runs them). 50 clients, each an
enterprise user signed in with an access token as the device flow issues them
and one keep-alive connection, submit jobs with a 1.6 KB spec. The clients send
requests encoded once (`http_load`): on the two cores the gateway shares with
them, a general HTTP client would take CPU from it and add its own delays.

- Throughput: the 50 clients submit 2,000 jobs back to back, as fast as the
  gateway answers (closed loop); submissions/s is the rate it sustained.
- Latency at the target rate: the 50 clients together offer 300 submissions/s
  (each one every 1/6 s, staggered) for 2,000 submissions. Each latency is taken
  from the moment the request was due, not when it could be sent, so a gateway
  that falls behind shows its queueing delay instead of hiding it. (Closed-loop
  latency cannot meet both targets at once: with 50 requests always in flight,
  the mean latency is 50 / throughput, 167 ms at 300/s.)
- One client: 200 submissions one after the other, latency with no queueing.
- Projection lag, in PostgreSQL on `jobs.last_sequence`: in a second run at the
  target rate (LAG_SUBMISSIONS, apart from the latency run because the sampler's
  polling loads the same two cores), for every tenth submission from the moment
  its POST returned (its `job.submitted` event acknowledged by JetStream) until
  the projector has folded that event into the row; then, with the gateway idle,
  for 200 `job.cancel-requested` events appended through the event store as
  another service would, from just before each append until the row shows its
  sequence.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from uuid import UUID

import asyncpg
import httpx
import nats

from ckrv.events.state import RequestCancel, decide
from ckrv.events.store import JobEventStore
from ckrv.services.gateway.identity.keys import SigningKeys
from tests.perf.http_load import KeepAliveClient
from tests.perf.local_gateway import local_gateway
from tests.perf.report import BenchmarkResult, Figure, latency_figures
from tests.running_gateway import RunningGateway

CLIENTS = 50
SUBMISSIONS = 2_000
LAG_SUBMISSIONS = 1_000
WARM_UP_PER_CLIENT = 2
SEQUENTIAL_SUBMISSIONS = 200
LAG_SAMPLE_EVERY = 10
LAG_EVENTS = 200
POLL_SECONDS = 0.001

THROUGHPUT_TARGET = 300
SUBMIT_P99_TARGET_MS = 50.0
LAG_P99_TARGET_MS = 100.0

SPEC = (
    "id: add-rate-limiter\n"
    "overview: |\n"
    "  Orders are created faster than the payment provider accepts them.\n"
    "goal: Limit order creation to 20 per second per customer, with tests.\n"
    "constraints:\n"
    + "".join(f"  - constraint {n}: keep the public API unchanged\n" for n in range(30))
)
BODY = {
    "spec_content": SPEC,
    "git_repo_url": "https://github.com/acme/orders-service.git",
    "git_base_branch": "main",
}


class LagSampler:
    """Polls the rows of sampled jobs and notes when each first shows its submitted event."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self._connection = connection
        self._waiting: dict[UUID, float] = {}
        self.lags: list[float] = []

    def watch(self, job_id: UUID, since: float) -> None:
        self._waiting[job_id] = since

    async def run(self, done: asyncio.Event) -> None:
        while not done.is_set() or self._waiting:
            if self._waiting:
                rows = await self._connection.fetch(
                    "select id, last_sequence from jobs where id = any($1::uuid[])",
                    list(self._waiting),
                )
                now = time.perf_counter()
                for row in rows:
                    if row["last_sequence"] > 0:
                        self.lags.append(now - self._waiting.pop(row["id"]))
            await asyncio.sleep(POLL_SECONDS)


class Submitter:
    """One client: a user's keep-alive connection and the submission, encoded once."""

    def __init__(self, api_url: str, token: str) -> None:
        self.connection = KeepAliveClient(api_url, {"Authorization": f"Bearer {token}"})
        self.request = self.connection.prepare_post("/jobs", BODY)


async def submit(client: Submitter) -> tuple[UUID, float]:
    """Submit one job; its id and when the answer came."""
    answer = await client.connection.send(client.request)
    returned = time.perf_counter()
    if answer.status != 201:
        raise RuntimeError(f"submission refused: {answer.status} {answer.body!r}")
    return UUID(answer.json()["id"]), returned


async def closed_loop(clients: list[Submitter]) -> tuple[float, list[float]]:
    """Every client submits back to back until SUBMISSIONS are done: (elapsed, latencies)."""
    latencies: list[float] = []
    remaining = SUBMISSIONS

    async def sender(client: Submitter) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            sent = time.perf_counter()
            _, returned = await submit(client)
            latencies.append(returned - sent)

    started = time.perf_counter()
    await asyncio.gather(*(sender(client) for client in clients))
    return time.perf_counter() - started, latencies


async def at_target_rate(
    clients: list[Submitter], submissions: int, sampler: LagSampler | None = None
) -> tuple[float, list[float], list[UUID]]:
    """`submissions` offered at THROUGHPUT_TARGET/s: (elapsed, latencies from due time, job
    ids); every LAG_SAMPLE_EVERY-th job watched by `sampler` if given."""
    interval = len(clients) / THROUGHPUT_TARGET
    per_client = submissions // len(clients)
    latencies: list[float] = []
    job_ids: list[UUID] = []
    started = time.perf_counter()

    async def sender(index: int, client: Submitter) -> None:
        first = started + index * interval / len(clients)
        for n in range(per_client):
            due = first + n * interval
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            job_id, returned = await submit(client)
            latencies.append(returned - due)
            job_ids.append(job_id)
            if sampler is not None and len(job_ids) % LAG_SAMPLE_EVERY == 0:
                sampler.watch(job_id, returned)

    await asyncio.gather(*(sender(index, client) for index, client in enumerate(clients)))
    return time.perf_counter() - started, latencies, job_ids


async def one_at_a_time(client: Submitter) -> list[float]:
    latencies = []
    for _ in range(SEQUENTIAL_SUBMISSIONS):
        sent = time.perf_counter()
        _, returned = await submit(client)
        latencies.append(returned - sent)
    return latencies


async def event_lags(
    store: JobEventStore, connection: asyncpg.Connection, job_ids: list[UUID]
) -> list[float]:
    lags: list[float] = []
    for job_id in job_ids:
        loaded = await store.load(job_id)
        (event,) = decide(loaded.state, RequestCancel(actor="user:bench", reason="benchmark"))
        started = time.perf_counter()
        appended = await store.append(event, expected_sequence=loaded.last_sequence)
        while True:
            shown = await connection.fetchval(
                "select last_sequence from jobs where id = $1", job_id
            )
            if shown >= appended.sequence:
                break
            await asyncio.sleep(POLL_SECONDS / 10)
        lags.append(time.perf_counter() - started)
    return lags


def process_cpu_seconds(pid: int) -> float:
    """User and system CPU time the process used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime and stime, fields 14 and 15 of proc(5), counted from the state field (3).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def wait_until_projected(connection: asyncpg.Connection) -> None:
    """Wait for the projector to catch up, so each phase starts from an idle gateway."""
    while True:
        behind = await connection.fetchval("select count(*) from jobs where last_sequence = 0")
        if not behind:
            return
        await asyncio.sleep(0.1)


async def access_tokens(gateway: RunningGateway) -> list[str]:
    """An access token for each client's enterprise user, signed with the gateway's key."""
    keys = SigningKeys(gateway.signing_keys, issuer=gateway.url)
    tokens = []
    async with httpx.AsyncClient(base_url=gateway.api_url) as client:
        for n in range(CLIENTS):
            api_token = gateway.token(f"bench-{n}@example.com", "enterprise")
            me = await client.get("/users/me", headers={"Authorization": f"Bearer {api_token}"})
            me.raise_for_status()
            tokens.append(keys.issue(UUID(me.json()["id"]), lifetime_seconds=3600)[0])
    return tokens


async def measure(gateway: RunningGateway, nats_url: str, dsn: str) -> list[Figure]:
    clients = [Submitter(gateway.api_url, token) for token in await access_tokens(gateway)]
    nc = await nats.connect(nats_url)
    connection = await asyncpg.connect(dsn)
    try:
        # Warm-up: users created, connections open, code paths and pools in use.
        for _ in range(WARM_UP_PER_CLIENT):
            await asyncio.gather(*(submit(client) for client in clients))
        await wait_until_projected(connection)

        cpu_before = process_cpu_seconds(gateway.pid)
        elapsed, saturated = await closed_loop(clients)
        await wait_until_projected(connection)
        cpu_per_submission = (process_cpu_seconds(gateway.pid) - cpu_before) / len(saturated)

        paced_elapsed, paced, job_ids = await at_target_rate(clients, SUBMISSIONS)
        await wait_until_projected(connection)

        sampler = LagSampler(connection)
        done = asyncio.Event()
        sampling = asyncio.create_task(sampler.run(done))
        await at_target_rate(clients, LAG_SUBMISSIONS, sampler)
        done.set()
        await sampling
        await wait_until_projected(connection)

        sequential = await one_at_a_time(clients[0])
        await wait_until_projected(connection)
        lags = await event_lags(
            JobEventStore(nc), connection, job_ids[:: len(job_ids) // LAG_EVENTS][:LAG_EVENTS]
        )
    finally:
        await connection.close()
        await nc.close()
        for client in clients:
            await client.connection.close()
    return [
        Figure("closed loop: submissions/s", len(saturated) / elapsed, "jobs/s", THROUGHPUT_TARGET),
        # All threads, the projector's included: what one submission costs the process.
        Figure(
            "closed loop: gateway CPU per submission",
            cpu_per_submission * 1000,
            "ms",
            higher_is_better=False,
        ),
        *latency_figures("closed loop: latency", saturated, None),
        Figure(f"offered {THROUGHPUT_TARGET}/s: achieved", len(paced) / paced_elapsed, "jobs/s"),
        *latency_figures(f"offered {THROUGHPUT_TARGET}/s: latency", paced, SUBMIT_P99_TARGET_MS),
        *latency_figures("one client: latency", sequential, None),
        *latency_figures(
            f"offered {THROUGHPUT_TARGET}/s: projection lag", sampler.lags, LAG_P99_TARGET_MS
        ),
        *latency_figures("idle: projection lag", lags, LAG_P99_TARGET_MS),
    ]


async def run() -> BenchmarkResult:
    async with local_gateway() as local:
        figures = await measure(local.gateway, local.nats_url, local.database_url)
    return BenchmarkResult(
        name="gateway_submit",
        description=(
            "POST /v1/jobs against one gateway process (NATS and PostgreSQL on loopback): "
            "closed-loop throughput, latency at the target rate, and the projector's lag."
        ),
        figures=figures,
        parameters={
            "clients": CLIENTS,
            "submissions_per_phase": SUBMISSIONS,
            "lag_phase_submissions": LAG_SUBMISSIONS,
            "offered_rate": THROUGHPUT_TARGET,
            "sequential_submissions": SEQUENTIAL_SUBMISSIONS,
            "spec_bytes": len(SPEC.encode()),
            "lag_sample_every": LAG_SAMPLE_EVERY,
            "lag_events": LAG_EVENTS,
            "gateway_processes": 1,
        },
    )
