"""Horizontal scale: 200 jobs through two gateways and two replicas of every service.

Four users submit half their jobs through each gateway; every job's script prints
numbered lines and writes a file. When a quarter of the jobs have ended, one
replica of every service and one gateway are SIGKILLed; the gateway comes back,
the services' survivors carry on alone. Then, from the stream, the runner, the
logs, the webhook receiver and both gateways: every job succeeded, was dispatched
once to one workload and has no event twice; no more workloads ran at once than
the dispatchers' capacity and the users' tier allow; its log holds each line once,
in order; its `job.succeeded` webhook arrived, signed; both gateways show the same
jobs, and stream the same logs and events.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
from httpx_sse import EventSource
from nats.aio.client import Client
from nats.aio.msg import Msg
from sqlalchemy import func, select
from sqlmodel import col

from ckrv.events.catalog import JobArtifactStored, JobPhaseChanged
from ckrv.events.history import StoredEvent
from ckrv.events.subjects import JOBS_SUBJECTS, LOGS_STREAM, LOGS_SUBJECTS, job_log_subject
from ckrv.schemas.api import SubscriptionTier
from ckrv.services.artifacts.retention import ResultRetention
from ckrv.services.common.connections import connect_nats
from ckrv.services.common.db import session_factory, temporary_engine
from ckrv.services.common.tiers import TIERS
from ckrv.services.dispatcher.admission import Admission, DispatchLease
from ckrv.services.gateway.projection import read_all_events
from ckrv.services.runners.base import WorkloadState
from ckrv.services.stack.service_process import ServiceProcess
from tests.integration.execution.conftest import Execution
from tests.integration.gateway.log_lines import log_stream, seqs
from tests.integration.scale.conftest import SCALE_SETTINGS
from tests.webhook_receiver import Received, WebhookReceiver

pytestmark = pytest.mark.integration

USERS = 4
JOBS_PER_USER = 50
JOBS = USERS * JOBS_PER_USER
LINES_PER_JOB = 20
KILL_AFTER_ENDED = JOBS // 4
# Submissions in flight at once, over both gateways.
SUBMITTING = 16
ALL_ENDED_WITHIN_SECONDS = 300.0
# After the last end: the logs' archives, the webhooks, the rows of what a killed replica
# had fetched (its consumer hands it to the survivor once the ack wait of 30 s ran out).
SETTLED_WITHIN_SECONDS = 60.0
# Subject tokens of the events that end a job.
ENDS = frozenset({"succeeded", "failed", "timed-out", "cancelled", "rejected"})
# The events a job that runs once, to success, has exactly one of; and the others it has.
ONCE_EACH = ("job.submitted", "job.queued", "job.dispatched", "job.started", "job.succeeded")
ALSO = frozenset({"job.phase-changed", "job.artifact-stored"})
ARTIFACTS = ("diff.patch", "repo.bundle", "result.json", "logs.jsonl")


def script(tag: str) -> list[str]:
    return [
        f'for n in $(seq 1 {LINES_PER_JOB}); do echo "line $n of {tag}"; done',
        f"echo {tag} > SCALE.md",
    ]


def printed_lines(tag: str) -> list[str]:
    return [f"line {n} of {tag}" for n in range(1, LINES_PER_JOB + 1)]


@dataclass
class User:
    email: str
    clients: list[httpx.AsyncClient]
    """One per gateway, each with the user's token."""
    webhook_id: str = ""
    webhook_secret: str = ""
    jobs: dict[UUID, str] = field(default_factory=dict)
    """Each job's tag, which its script prints."""


@dataclass
class JobWatch:
    """JOBS as it happens: which jobs have ended, and which have their log archived."""

    ended: set[UUID] = field(default_factory=set)
    archived: set[UUID] = field(default_factory=set)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_event(self, message: Msg) -> None:
        _, job_id, event = message.subject.split(".")
        if event in ENDS:
            self.ended.add(UUID(job_id))
        elif event == "artifact-stored" and json.loads(message.data)["data"]["name"] == (
            "logs.jsonl"
        ):
            self.archived.add(UUID(job_id))
        self.changed.set()

    async def until(self, condition: Callable[[], bool], what: str, within: float) -> None:
        try:
            async with asyncio.timeout(within):
                while not condition():
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            pytest.fail(
                f"{what}: not within {within:g} s; {len(self.ended)} jobs ended, "
                f"{len(self.archived)} logs archived"
            )


@asynccontextmanager
async def users_of(scale: Execution) -> AsyncIterator[list[User]]:
    async with AsyncExitStack() as stack:
        users = []
        for number in range(USERS):
            email = f"scale-{number}-{uuid4().hex[:8]}@example.com"
            # Enterprise: 25 jobs at once each, so the dispatcher's capacity is the limit.
            token = scale.gateway.token(email, "enterprise")
            clients = [
                await stack.enter_async_context(
                    httpx.AsyncClient(
                        base_url=gateway.api_url,
                        headers={"Authorization": f"Bearer {token}"},
                        timeout=60,
                    )
                )
                for gateway in scale.gateways
            ]
            users.append(User(email, clients))
        yield users


async def add_webhook(user: User, url: str) -> None:
    response = await user.clients[0].post(
        "/webhooks", json={"url": url, "event_types": ["job.succeeded"]}
    )
    assert response.status_code == 201, response.text
    user.webhook_id, user.webhook_secret = response.json()["id"], response.json()["secret"]


async def submit_all(users: Sequence[User], repository: str) -> None:
    """Every user's jobs, every other one through the other gateway."""
    room = asyncio.Semaphore(SUBMITTING)

    async def submit(user: User, number: int) -> None:
        tag = f"{user.email.split('@')[0]}-{number}"
        spec = {"id": "scale-test", "overview": "Print lines, write a file.", "script": script(tag)}
        body = {
            "spec_content": json.dumps(spec),
            "git_repo_url": repository,
            "git_base_branch": "main",
        }
        async with room:
            response = await user.clients[number % len(user.clients)].post("/jobs", json=body)
        assert response.status_code == 201, response.text
        user.jobs[UUID(response.json()["id"])] = tag

    await asyncio.gather(
        *(submit(user, number) for user in users for number in range(JOBS_PER_USER))
    )


async def kill(process: ServiceProcess) -> None:
    """SIGKILL, as a node dying does: no shutdown of any kind."""
    assert process.process is not None
    assert process.process.pid is not None
    os.killpg(process.process.pid, signal.SIGKILL)
    await process.stop()


def assert_every_replica_runs(scale: Execution) -> None:
    """Fail at once, with its log, if a replica ended on its own: the kill would leave none."""
    for name, processes in scale.replicas.items():
        for number, process in enumerate(processes, start=1):
            assert process.process is not None
            assert not process.process.has_exited(), (
                f"{name} replica {number} ended before the kill:\n{process.process.log_tail()}"
            )


async def read_logs(nc: Client) -> dict[str, list[dict[str, Any]]]:
    """Every entry on LOGS by subject, in stream order."""
    js = nc.jetstream()
    total = (await js.stream_info(LOGS_STREAM)).state.messages
    entries: dict[str, list[dict[str, Any]]] = defaultdict(list)
    subscription = await js.subscribe(LOGS_SUBJECTS, ordered_consumer=True, stream=LOGS_STREAM)
    try:
        for _ in range(total):
            message = await subscription.next_msg(timeout=10)
            entries[message.subject].append(json.loads(message.data))
    finally:
        await subscription.unsubscribe()
    return entries


async def all_pages(client: httpx.AsyncClient, path: str, key: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 100} | ({"cursor": cursor} if cursor else {})
        response = await client.get(path, params=params)
        assert response.status_code == 200, response.text
        found += response.json()[key]
        cursor = response.json()["next_cursor"]
        if cursor is None:
            return found


async def until_counted(scale: Execution, table: Any, job_ids: Iterable[UUID], count: int) -> None:
    """Wait until `table` holds `count` rows of the jobs."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLED_WITHIN_SECONDS
    while True:
        async with (
            temporary_engine(scale.database_url) as engine,
            session_factory(engine)() as session,
        ):
            counted = await session.scalar(
                select(func.count()).select_from(table).where(col(table.job_id).in_(job_ids))
            )
        if counted == count:
            return
        assert loop.time() < deadline, f"{table.__tablename__}: {counted} rows, not {count}"
        await asyncio.sleep(0.5)


async def test_two_of_everything_run_200_jobs_once_each_through_a_kill(
    scale: Execution,
) -> None:
    nc = await connect_nats(scale.nats_url, name="scale-test")
    watch = JobWatch()
    await nc.subscribe(JOBS_SUBJECTS, cb=watch.on_event)
    try:
        async with WebhookReceiver() as receiver, users_of(scale) as users:
            for user in users:
                await add_webhook(user, receiver.url)
            # Cloned by path: the jobs' git traffic costs no TLS and no git server.
            await submit_all(users, scale.repository(local=True))
            jobs = {job_id: tag for user in users for job_id, tag in user.jobs.items()}
            assert len(jobs) == JOBS

            await watch.until(
                lambda: len(watch.ended) >= KILL_AFTER_ENDED, "a quarter ended", within=150
            )
            assert_every_replica_runs(scale)
            killed = {name: processes[0] for name, processes in scale.replicas.items()}
            await asyncio.gather(*(kill(process) for process in killed.values()))
            # The gateway comes back; the services' survivors carry on alone.
            await killed["gateway"].start()

            await watch.until(
                lambda: watch.ended >= jobs.keys(), "every job ended", ALL_ENDED_WITHIN_SECONDS
            )
            await watch.until(
                lambda: watch.archived >= jobs.keys(),
                "every job's log archived",
                SETTLED_WITHIN_SECONDS,
            )
            await receiver.wait_for(
                lambda: len({arrival.webhook_id for arrival in receiver.confirmed()}) >= JOBS,
                "a webhook for every job",
                within=SETTLED_WITHIN_SECONDS,
            )

            by_job = histories(await read_all_events(nc))
            check_histories(jobs, by_job)
            await check_workloads(scale, users)
            logs = await read_logs(nc)
            check_logs(jobs, logs)
            await check_webhooks(users, by_job, receiver.received)
            await check_read_models(users)
            await check_streams_from_each_gateway(users, by_job, logs)
            # Each job's end handled once by the artifacts and the dispatcher replicas.
            await until_counted(scale, ResultRetention, jobs, JOBS)
            await until_counted(scale, Admission, jobs, 0)
            await until_counted(scale, DispatchLease, jobs, 0)
    finally:
        await nc.close()


def histories(events: Iterable[StoredEvent]) -> dict[UUID, list[StoredEvent]]:
    by_job: dict[UUID, list[StoredEvent]] = defaultdict(list)
    for stored in events:
        by_job[stored.event.job_id].append(stored)
    return by_job


def check_histories(jobs: dict[UUID, str], by_job: dict[UUID, list[StoredEvent]]) -> None:
    for job_id in jobs:
        history = [stored.event for stored in by_job[job_id]]
        types = Counter[str](event.type for event in history)
        assert len({event.id for event in history}) == len(history), f"{job_id}: {types}"
        assert [types[name] for name in ONCE_EACH] == [1] * len(ONCE_EACH), f"{job_id}: {types}"
        assert types.keys() <= {*ONCE_EACH, *ALSO}, f"{job_id}: {types}"
        phases = Counter(
            event.data.phase for event in history if isinstance(event, JobPhaseChanged)
        )
        assert set(phases.values()) == {1}, f"{job_id}: {phases}"
        artifacts = Counter(
            event.data.name for event in history if isinstance(event, JobArtifactStored)
        )
        assert artifacts == Counter(ARTIFACTS), f"{job_id}: {artifacts}"


async def check_workloads(scale: Execution, users: Sequence[User]) -> None:
    async with scale.runner() as runner:
        workloads = await runner.list()
    jobs = [job_id for user in users for job_id in user.jobs]
    assert Counter(status.job_id for status in workloads) == Counter(jobs)
    assert {status.state for status in workloads} == {WorkloadState.SUCCEEDED}
    # Two dispatchers admitting at once never gave out more places than there are.
    lifetimes = {status.job_id: (status.created_at, status.finished_at) for status in workloads}
    assert most_at_once(lifetimes.values()) <= int(SCALE_SETTINGS["CKRV_DISPATCHER_CAPACITY"])
    for user in users:
        mine = [lifetimes[job_id] for job_id in user.jobs]
        assert most_at_once(mine) <= TIERS[SubscriptionTier.ENTERPRISE].concurrent_jobs


def most_at_once(lifetimes: Iterable[tuple[datetime, datetime | None]]) -> int:
    """The most of these (start, end) spans that overlap at one moment."""
    changes = []
    for start, end in lifetimes:
        assert end is not None
        # At one moment an end comes before a start (-1 sorts first): a place freed is taken.
        changes += [(start, 1), (end, -1)]
    running = most = 0
    for _, change in sorted(changes):
        running += change
        most = max(most, running)
    return most


def check_logs(jobs: dict[UUID, str], logs: dict[str, list[dict[str, Any]]]) -> None:
    for job_id, tag in jobs.items():
        entries = logs[job_log_subject(job_id)]
        assert [entry["seq"] for entry in entries] == list(range(1, len(entries) + 1)), job_id
        lines = [entry["message"] for entry in entries if entry["message"].startswith("line ")]
        assert lines == printed_lines(tag), job_id


async def check_webhooks(
    users: Sequence[User], by_job: dict[UUID, list[StoredEvent]], received: list[Received]
) -> None:
    arrivals: dict[str, list[Received]] = defaultdict(list)
    for arrival in received:
        arrivals[arrival.webhook_id].append(arrival)
    for user in users:
        succeeded = {
            str(stored.event.id): job_id
            for job_id in user.jobs
            for stored in by_job[job_id]
            if stored.event.type == "job.succeeded"
        }
        deliveries = await all_pages(
            user.clients[0], f"/webhooks/{user.webhook_id}/deliveries", "deliveries"
        )
        assert sorted(delivery["event_id"] for delivery in deliveries) == sorted(succeeded)
        for delivery in deliveries:
            assert delivery["status"] == "succeeded", delivery
            sent = arrivals[delivery["event_id"]]
            # Once; or again, when the notifier that had claimed it was killed before it
            # recorded the answer, and the claim (an attempt) ran out.
            assert 1 <= len(sent) <= delivery["attempts"], delivery
            for arrival in sent:
                payload = arrival.verify(user.webhook_secret)
                assert payload["data"]["id"] == str(succeeded[delivery["event_id"]])


async def check_read_models(users: Sequence[User]) -> None:
    for user in users:
        shown = [await all_pages(client, "/jobs", "jobs") for client in user.clients]
        assert shown[0] == shown[1]
        assert sorted(job["id"] for job in shown[0]) == sorted(map(str, user.jobs))
        assert {job["status"] for job in shown[0]} == {"succeeded"}


async def check_streams_from_each_gateway(
    users: Sequence[User],
    by_job: dict[UUID, list[StoredEvent]],
    logs: dict[str, list[dict[str, Any]]],
) -> None:
    """One job of each user: its log, and its events, as Server-Sent Events of each gateway."""

    async def followed_log(client: httpx.AsyncClient, job_id: UUID) -> list[int]:
        async with log_stream(client, job_id) as stream:
            return seqs(await stream.rest())

    async def event_feed(client: httpx.AsyncClient, job_id: UUID, count: int) -> list[str]:
        params = {"job": str(job_id), "last_event_id": "0"}
        async with client.stream("GET", "/events", params=params) as response:
            assert response.status_code == 200, (await response.aread()).decode()
            ids: list[str] = []
            async with asyncio.timeout(SETTLED_WITHIN_SECONDS):
                async for event in EventSource(response).aiter_sse():
                    if event.data:
                        ids.append(json.loads(event.data)["id"])
                    if len(ids) == count:
                        return ids
        pytest.fail(f"the event feed of {job_id} ended after {len(ids)} events")

    for user in users:
        job_id = next(iter(user.jobs))
        history = [str(stored.event.id) for stored in by_job[job_id]]
        lines = [entry["seq"] for entry in logs[job_log_subject(job_id)]]
        for client in user.clients:
            assert await followed_log(client, job_id) == lines
            assert await event_feed(client, job_id, len(history)) == history
