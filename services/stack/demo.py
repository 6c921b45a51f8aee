"""`just demo`: a throw-away local stack and a user's job on it, through the `ckrv` command.

Starts `ckrv-cloud up` on free loopback ports in a temporary folder, submits a
spec with `ckrv run --cloud`, follows it with `ckrv status` and `ckrv jobs`,
shows the job's events on the JOBS stream, cancels it, and stops the stack.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from ckrv.services.stack.launcher import GRPC_PORT_OFFSET, STACK_FILE
from ckrv.services.stack.ports import free_ports_apart

STACK_READY_SECONDS = 120.0
DEMO_REPOSITORY = "https://example.com/acme/service.git"
DEMO_SPEC = """\
id: add-health-endpoint
goal: 'Add a /health endpoint that answers {"status": "ok"}, with a test.'
"""


def stack_arguments(state_dir: Path) -> list[str]:
    seaweed_options = (
        "--s3-port",
        "--seaweed-master-port",
        "--seaweed-volume-port",
        "--seaweed-filer-port",
        "--seaweed-admin-port",
    )
    # One allocation, so no plain port lands on a SeaweedFS port's gRPC partner.
    allocated = free_ports_apart([0] * 4 + [GRPC_PORT_OFFSET] * len(seaweed_options))
    nats_port, monitor_port, postgres_port, services_port = allocated[:4]
    seaweed = dict(zip(seaweed_options, allocated[4:], strict=True))
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


def ckrv(arguments: list[str], environment: dict[str, str]) -> str:
    """Run the user's `ckrv` command and show it as a user would type it."""
    print(f"\n$ ckrv {' '.join(arguments)}", flush=True)
    completed = subprocess.run(
        [sys.executable, "-m", "ckrv.cli.app", *arguments],
        env=environment,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    print(completed.stdout.rstrip())
    if completed.returncode != 0:
        print(completed.stderr.rstrip(), file=sys.stderr)
        sys.exit(f"demo: `ckrv {arguments[0]}` failed with exit code {completed.returncode}")
    return completed.stdout


def create_demo_user(endpoints: dict[str, Any]) -> str:
    """An account with an API token, made the way an operator makes one; returns the token."""
    arguments = ["users", "create", "--email", "demo@example.com", "--tier", "pro", "--token"]
    print(f"\n$ ckrv-cloud {' '.join(arguments)}", flush=True)
    completed = subprocess.run(
        [sys.executable, "-m", "ckrv.services.operator", *arguments],
        env=os.environ | endpoints["environment"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if completed.returncode != 0:
        sys.exit(f"demo: creating the demo user failed: {completed.stderr.strip()}")
    token = completed.stdout.split("CKRV_TOKEN): ")[1].strip()
    print(completed.stdout.replace(token, token[:12] + "…").rstrip())
    return token


def use_the_stack(endpoints: dict[str, Any], workdir: Path) -> None:
    gateway = endpoints["services"]["gateway"]["url"]
    print(f"\ngateway readiness: {httpx.get(f'{gateway}/readyz').json()}")
    spec = workdir / "add-health-endpoint.yaml"
    spec.write_text(DEMO_SPEC)
    token = create_demo_user(endpoints)
    # Both spellings, so a token or URL left in the developer's shell cannot take over.
    environment = os.environ | {
        "CKRV_API_URL": f"{gateway}/v1",
        "CHAKRAVARTI_API_URL": f"{gateway}/v1",
        "CKRV_TOKEN": token,
        "CHAKRAVARTI_TOKEN": token,
    }
    job_id = ckrv(
        ["run", "--cloud", str(spec), "--repo", DEMO_REPOSITORY, "--base-branch", "main", "-q"],
        environment,
    ).strip()
    ckrv(["status", job_id], environment)
    ckrv(["jobs"], environment)

    events = httpx.get(
        f"{gateway}/v1/jobs/{job_id}/events",
        headers={"Authorization": f"Bearer {token}"},
    ).json()["events"]
    print("\nthe job's events on JOBS:")
    for event in events:
        print(f"  #{event['sequence']}  {event['type']}  by {event['actor']}")
    ckrv(["cancel", job_id], environment)


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
            use_the_stack(endpoints, Path(temporary))
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
        print("\nlocal stack stopped; demo finished")


if __name__ == "__main__":
    main()
