"""The relay on real workloads: entries in order, phases on the job, secrets masked, the archive."""

from __future__ import annotations

import hashlib
from uuid import UUID, uuid4

import pytest
from nats.aio.client import Client
from sqlalchemy import select, update
from sqlmodel import col

from ckrv.events.catalog import JobArtifactStored, JobPhaseChanged, JobSucceededData
from ckrv.events.state import JobStatus, SucceedJob
from ckrv.events.store import JobEventStore
from ckrv.schemas.logs import MAX_LOG_MESSAGE_CHARACTERS, LogEntry, LogLevel
from ckrv.services.common.credentials import GitCredential
from ckrv.services.common.db import create_engine, session_factory
from ckrv.services.common.settings import CommonSettings
from ckrv.services.log_relay.positions import RelayPosition
from ckrv.services.runners.local import LocalRunner
from ckrv.services.stack.seaweed_server import SeaweedServer
from tests.integration.log_relay.conftest import (
    TESTS,
    archive_bytes,
    dispatched_job,
    drive,
    entries_of,
    log_key,
    printing,
    published,
    python_workload,
    running_relay,
    stored_pat,
    wait_for_archive,
    wait_until,
    worker_record,
)

pytestmark = pytest.mark.integration

# Shaped like a GitHub token; never a real one.
GITHUB_TOKEN = "ghp_" + "T3stT0kenN0tRealAtAll0123456789abcdef"


async def wait_for_artifact(store: JobEventStore, job_id: UUID) -> JobArtifactStored:
    async def recorded() -> bool:
        return any(
            isinstance(stored.event, JobArtifactStored) for stored in await store.read(job_id)
        )

    await wait_until(recorded, "job.artifact-stored recorded")
    [artifact] = [
        stored.event
        for stored in await store.read(job_id)
        if isinstance(stored.event, JobArtifactStored)
    ]
    return artifact


async def test_lines_are_published_in_order_mapped_wrapped_and_split(
    common: CommonSettings, nc: Client, runner: LocalRunner, s3_server: SeaweedServer
) -> None:
    job_id = uuid4()
    script = (
        printing(
            worker_record("Starting", event="started"),
            worker_record("careful now", level="warning", source="agent:claude", phase="executing"),
            "plain text from a tool",
        )
        + "sys.stdout.write(''.join(f'{n:07d},' for n in range(12_500)) + '\\n')\n"
        + "sys.stdout.write('the last words, without a line break')\n"
    )
    long_line = "".join(f"{n:07d}," for n in range(12_500))

    async with running_relay(common, runner):
        await runner.create(python_workload(job_id, script))
        await wait_for_archive(s3_server, job_id)

    entries = entries_of(await published(nc, job_id))
    assert [entry.seq for entry in entries] == list(range(1, len(entries) + 1))
    started, warning, plain, *pieces, last = entries
    assert (started.source, started.level, started.message) == ("worker", LogLevel.INFO, "Starting")
    assert started.timestamp.isoformat() == "2026-11-27T12:00:00+00:00"
    assert (warning.source, warning.level, warning.phase, warning.message) == (
        "agent:claude",
        LogLevel.WARN,
        "executing",
        "careful now",
    )
    assert (plain.source, plain.level, plain.message) == (
        "worker",
        LogLevel.INFO,
        "plain text from a tool",
    )
    assert len(pieces) > 1
    assert all(len(piece.message) <= MAX_LOG_MESSAGE_CHARACTERS for piece in pieces)
    assert "".join(piece.message for piece in pieces) == long_line
    assert last.message == "the last words, without a line break"
    assert {entry.attempt for entry in entries} == {1}


async def test_phase_markers_become_job_events_and_the_log_is_archived_and_recorded(
    common: CommonSettings, nc: Client, runner: LocalRunner, s3_server: SeaweedServer
) -> None:
    store = JobEventStore(nc)
    job_id = await dispatched_job(store)
    script = printing(
        worker_record("Starting", event="started"),
        worker_record("Cloning", event="phase", phase="cloning"),
        worker_record("cloned 12 files", phase="cloning"),
        worker_record("Executing", event="phase", phase="executing"),
        worker_record("hello from the agent", source="agent:script", phase="executing"),
    )

    async with running_relay(common, runner):
        await runner.create(python_workload(job_id, script))
        artifact = await wait_for_artifact(store, job_id)

    events = [stored.event for stored in await store.read(job_id)]
    phases = [event.data.phase for event in events if isinstance(event, JobPhaseChanged)]
    assert phases == ["cloning", "executing"]
    state = (await store.load(job_id)).state
    assert (state.status, state.phase) == (JobStatus.RUNNING, "executing")
    content = archive_bytes(s3_server, log_key(job_id))
    assert content is not None
    assert content == b"".join(message + b"\n" for message in await published(nc, job_id))
    assert len(content.splitlines()) == 5
    assert (artifact.data.name, artifact.data.key, artifact.data.attempt) == (
        "logs.jsonl",
        log_key(job_id),
        1,
    )
    assert artifact.data.size_bytes == len(content)
    assert artifact.data.sha256 == hashlib.sha256(content).hexdigest()


async def test_a_job_that_ended_keeps_its_end_and_still_gets_its_log_archive(
    common: CommonSettings, nc: Client, runner: LocalRunner
) -> None:
    store = JobEventStore(nc)
    job_id = await dispatched_job(store)
    succeeded = SucceedJob(actor=TESTS, result=JobSucceededData(attempt=1, summary="Done."))
    await drive(store, job_id, succeeded)
    script = printing(worker_record("Cloning", event="phase", phase="cloning"), "late words")

    async with running_relay(common, runner):
        await runner.create(python_workload(job_id, script))
        await wait_for_artifact(store, job_id)

    state = (await store.load(job_id)).state
    assert state.status is JobStatus.SUCCEEDED
    assert not any(isinstance(stored.event, JobPhaseChanged) for stored in await store.read(job_id))
    assert [artifact.name for artifact in state.artifacts] == ["logs.jsonl"]
    assert [entry.message for entry in entries_of(await published(nc, job_id))] == [
        "Cloning",
        "late words",
    ]


async def test_the_job_s_credential_and_tokens_reach_neither_the_stream_nor_the_archive(
    common: CommonSettings, nc: Client, runner: LocalRunner, s3_server: SeaweedServer
) -> None:
    store = JobEventStore(nc)
    user_id = uuid4()
    # No known token format: only knowing the job's credential can hide it.
    pat = f"acme-pat-{uuid4().hex}"
    await stored_pat(common, user_id, "acme", pat)
    job_id = await dispatched_job(store, user_id=user_id, credential_name="acme")
    script = printing(
        f"git clone https://oauth2:{pat}@git.example.com/acme/app.git",
        worker_record(f"my token is {pat}", source="agent:claude"),
        f"export GITHUB_TOKEN={GITHUB_TOKEN}",
    )

    async with running_relay(common, runner):
        await runner.create(python_workload(job_id, script))
        archive = await wait_for_archive(s3_server, job_id)

    messages = await published(nc, job_id)
    for blob in [*messages, archive]:
        assert pat.encode() not in blob
        assert GITHUB_TOKEN.encode() not in blob
    assert [entry.message for entry in entries_of(messages)] == [
        "git clone https://[redacted]@git.example.com/acme/app.git",
        "my token is [redacted]",
        "export GITHUB_TOKEN=[redacted]",
    ]
    engine = create_engine(common.database_url.get_secret_value())
    try:
        async with session_factory(engine)() as session:
            last_used = await session.scalar(
                select(col(GitCredential.last_used_at)).where(col(GitCredential.user_id) == user_id)
            )
    finally:
        await engine.dispose()
    assert last_used is None, "reading a credential to hide it is no use of it"


async def test_entries_are_numbered_on_from_the_job_s_earlier_attempt(
    common: CommonSettings, nc: Client, runner: LocalRunner, s3_server: SeaweedServer
) -> None:
    job_id = uuid4()

    async with running_relay(common, runner):
        await runner.create(python_workload(job_id, printing("one", "two", "three")))
        await wait_for_archive(s3_server, job_id, attempt=1)
        await runner.create(python_workload(job_id, printing("four", "five"), attempt=2))
        second = await wait_for_archive(s3_server, job_id, attempt=2)

    entries = entries_of(await published(nc, job_id))
    assert [(entry.seq, entry.attempt, entry.message) for entry in entries] == [
        (1, 1, "one"),
        (2, 1, "two"),
        (3, 1, "three"),
        (4, 2, "four"),
        (5, 2, "five"),
    ]
    assert [LogEntry.model_validate_json(line).seq for line in second.splitlines()] == [4, 5]


async def test_a_relay_that_lost_its_saved_position_publishes_nothing_twice(
    common: CommonSettings, nc: Client, runner: LocalRunner, s3_server: SeaweedServer
) -> None:
    job_id = uuid4()
    workload = python_workload(job_id, printing(*(f"line {n}" for n in range(1, 51))))
    async with running_relay(common, runner):
        await runner.create(workload)
        first_archive = await wait_for_archive(s3_server, job_id)
    first = await published(nc, job_id)

    # As if the relay had died after publishing everything but before saving anything.
    engine = create_engine(common.database_url.get_secret_value())
    sessions = session_factory(engine)
    try:
        async with sessions() as session, session.begin():
            await session.execute(
                update(RelayPosition)
                .where(col(RelayPosition.workload_name) == workload.name)
                .values(output_offset=0, next_seq=1, archived_at=None)
            )

        async def archived_again() -> bool:
            async with sessions() as session:
                row = await session.get(RelayPosition, workload.name)
            return row is not None and row.archived_at is not None

        async with running_relay(common, runner):
            await wait_until(archived_again, "the log archived again")
    finally:
        await engine.dispose()

    assert await published(nc, job_id) == first
    assert len(first) == 50
    assert archive_bytes(s3_server, log_key(job_id)) == first_archive
