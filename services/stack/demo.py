"""`just demo`: a throw-away local stack, a job submitted to it, and the job's event history.

Starts `ckrv-cloud up` on free loopback ports in a temporary folder, submits a
job the way the gateway does (a `job.submitted` event appended through the
event store), shows the history and the state folded from it, shows that a
repeated submission is absorbed, and stops the stack.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import nats

from ckrv.events.catalog import JobSubmittedData
from ckrv.events.state import SubmitJob, api_status, decide
from ckrv.events.store import JobEventStore
from ckrv.services.stack.launcher import GRPC_PORT_OFFSET, STACK_FILE
from ckrv.services.stack.ports import free_port_with_partner, free_ports

STACK_READY_SECONDS = 120.0
DEMO_SPEC = """\
id: add-health-endpoint
goal: Add a /health endpoint that answers {"status": "ok"}, with a test.
"""


def stack_arguments(state_dir: Path) -> list[str]:
    nats_port, monitor_port, postgres_port, services_port = free_ports(4)
    seaweed = {
        option: free_port_with_partner(GRPC_PORT_OFFSET)
        for option in (
            "--s3-port",
            "--seaweed-master-port",
            "--seaweed-volume-port",
            "--seaweed-filer-port",
            "--seaweed-admin-port",
        )
    }
    ports = {
        "--nats-port": nats_port,
        "--nats-monitor-port": monitor_port,
        "--postgres-port": postgres_port,
        "--services-port": services_port,
        **seaweed,
    }
    return ["--state-dir", str(state_dir), *(f"{k}={v}" for k, v in ports.items())]


def wait_for_stack(stack_file: Path, process: subprocess.Popen[bytes]) -> dict[str, Any]:
    deadline = time.monotonic() + STACK_READY_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"demo: the local stack exited with {process.returncode}")
        if stack_file.exists():
            endpoints: dict[str, Any] = json.loads(stack_file.read_text())
            return endpoints
        time.sleep(0.2)
    sys.exit(f"demo: the local stack was not ready within {STACK_READY_SECONDS:.0f} s")


async def submit_and_show(endpoints: dict[str, Any]) -> None:
    gateway = endpoints["services"]["gateway"]["url"]
    async with httpx.AsyncClient() as http:
        readiness = (await http.get(f"{gateway}/readyz")).json()
    print(f"\ngateway readiness: {readiness}")

    nc = await nats.connect(endpoints["nats"]["url"])
    try:
        store = JobEventStore(nc)
        job_id = uuid4()
        submit = SubmitJob(
            actor="user:demo",
            submission=JobSubmittedData(
                user_id="demo",
                tier="free",
                spec_id="add-health-endpoint",
                spec_content=DEMO_SPEC,
                git_repo_url="https://example.com/acme/service.git",
                git_base_branch="main",
                time_limit_seconds=1800,
                max_attempts=3,
            ),
        )
        appended = await store.execute(job_id, lambda state: decide(state, submit))
        print(f"\nsubmitted job {job_id}: JOBS sequence {appended[0].sequence}")
        # The CLI retrying the same request must not create a second job or event.
        repeated = await store.execute(job_id, lambda state: decide(state, submit))
        print(f"the same submission again appends {len(repeated)} events")

        loaded = await store.load(job_id)
        print("\nevent history:")
        for stored in loaded.events:
            event = stored.event
            print(f"  #{stored.sequence}  {event.subject}  {event.type}  by {event.actor}")
        state = loaded.state
        print(
            f"\nfolded state: status={api_status(state)} (internal {state.status}), "
            f"repo={state.git_repo_url} branch={state.git_base_branch}"
        )
    finally:
        await nc.close()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="ckrv-demo-") as temporary:
        # PostgreSQL runs as an unprivileged user under root, and must reach its folder.
        Path(temporary).chmod(0o755)
        state_dir = Path(temporary) / "state"
        command = [sys.executable, "-m", "ckrv.services.stack", *stack_arguments(state_dir)]
        print("starting a throw-away local stack ...", flush=True)
        process = subprocess.Popen(command, env=os.environ | {"CKRV_ENV": "dev"})
        try:
            endpoints = wait_for_stack(state_dir / STACK_FILE, process)
            asyncio.run(submit_and_show(endpoints))
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
        print("\nlocal stack stopped; demo finished")


if __name__ == "__main__":
    main()
