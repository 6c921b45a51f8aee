"""A job's log end to end: the worker's lines through the log-relay to the API and `ckrv logs`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from uuid import UUID

import httpx
import nats
import pytest

from ckrv.events.subjects import LOGS_STREAM, job_log_subject
from ckrv.services.stack.seaweed_server import SeaweedServer
from tests.integration.execution.conftest import Execution, add_pat, submit, wait_for

pytestmark = pytest.mark.integration


async def stream_messages(execution: Execution, subject: str) -> list[str]:
    nc = await nats.connect(execution.nats_url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(LOGS_STREAM, subjects_filter=subject)
        count = (info.state.subjects or {}).get(subject, 0)
        subscription = await js.subscribe(subject, ordered_consumer=True, stream=LOGS_STREAM)
        messages = [(await subscription.next_msg(timeout=5)).data.decode() for _ in range(count)]
        await subscription.unsubscribe()
        return messages
    finally:
        await nc.close()


def ckrv_logs(execution: Execution, token: str, job_id: object) -> subprocess.CompletedProcess[str]:
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith("CKRV_")
    } | {"CKRV_API_URL": execution.gateway.api_url, "CKRV_TOKEN": token}
    return subprocess.run(
        [sys.executable, "-m", "ckrv.cli.app", "logs", str(job_id), "--no-color"],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=False,
    )


def artifact_names(client: httpx.Client, job_id: UUID) -> list[str]:
    events = client.get(f"/jobs/{job_id}/events").json()["events"]
    return [event["data"]["name"] for event in events if event["type"] == "job.artifact-stored"]


async def test_an_agent_printing_its_token_never_shows_it_and_the_log_reaches_the_user(
    execution: Execution, s3_server: SeaweedServer
) -> None:
    pat = execution.git.token
    with execution.client() as client:
        credential = add_pat(client, pat)
        job_id = submit(
            client,
            execution.repository(),
            [f"echo 'the token is {pat}'", "echo 'made a change' > CHANGE.md"],
            credential=credential,
        )
        job = wait_for(client, job_id)
        assert job["status"] == "succeeded", job["error_message"]
        token = client.headers["authorization"].removeprefix("Bearer ")
        page = client.get(f"/jobs/{job_id}/logs").json()
        # The archive is written once the relay has read the attempt's output to its end.
        deadline = time.monotonic() + 30
        while "logs.jsonl" not in (stored := artifact_names(client, job_id)):
            assert time.monotonic() < deadline, stored
            time.sleep(0.1)
        events = client.get(f"/jobs/{job_id}/events").json()["events"]
    messages = await stream_messages(execution, job_log_subject(job_id))
    archive = s3_server.client().get_object(s3_server.bucket, f"jobs/{job_id}/1/logs.jsonl")
    try:
        archived = archive.read().decode()
    finally:
        archive.close()
        archive.release_conn()
    shown = ckrv_logs(execution, token, job_id)

    assert shown.returncode == 0, shown.stderr
    for where in (json.dumps(page), "\n".join(messages), archived, shown.stdout, shown.stderr):
        assert pat not in where
    assert "the token is [redacted]" in shown.stdout
    assert [entry["seq"] for entry in page["logs"]] == list(range(1, len(page["logs"]) + 1))
    phases = [event["data"]["phase"] for event in events if event["type"] == "job.phase-changed"]
    assert phases[:1] == ["cloning"]
    assert "executing" in phases
