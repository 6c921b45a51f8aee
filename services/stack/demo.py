"""`just demo`: a throw-away local stack running a user's job for real, through the `ckrv` command.

In a temporary folder it creates a sample git repository (a tiny Python
service), starts `ckrv-cloud up` on free loopback ports, makes a user with an
API token, submits a spec whose `script` agent adds a `/health` endpoint and
its test, follows the job with `ckrv status` to its end, and prints the job's
summary, its events and the diff it produced. A second job that would sleep a
minute is cancelled while it runs. Then the stack stops and the folder goes.

Exits 0 when the job succeeded and the other was cancelled; otherwise non-zero
with a message saying what went wrong (the job's own error when it failed).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from ckrv.cli.models import Job
from ckrv.cli.render import status_text
from ckrv.services.stack.launcher import GRPC_PORT_OFFSET, STACK_FILE
from ckrv.services.stack.ports import free_ports_apart

STACK_READY_SECONDS = 120.0
# A job of a few shell commands ends in seconds; this only stops a stuck demo.
JOB_END_SECONDS = 60.0
POLL_INTERVAL_SECONDS = 0.2

SAMPLE_FILES = {
    "README.md": "# service\n\nA tiny JSON service: `python3 server.py`, then GET /hello.\n",
    "routes.py": '''\
"""The service's endpoints: each function answers GET on its path with JSON."""

ROUTES = {}


def route(path):
    def register(handler):
        ROUTES[path] = handler
        return handler

    return register


@route("/hello")
def hello():
    return {"message": "hello"}
''',
    "server.py": '''\
"""Serves the routes on http://127.0.0.1:8000."""

import json
from http.server import BaseHTTPRequestHandler, HTTPServer

from routes import ROUTES


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        handler = ROUTES.get(self.path)
        status, body = (200, handler()) if handler else (404, {"error": "not found"})
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps(body).encode())


if __name__ == "__main__":
    HTTPServer(("127.0.0.1", 8000), Handler).serve_forever()
''',
}

# The `script` agent runs the `script:` commands in the clone, as a coding agent would edit it.
HEALTH_SPEC = """\
id: add-health-endpoint
goal: 'Add a /health endpoint that answers {"status": "ok"}, with a test.'
script:
  - |
    cat >> routes.py <<'EOF'


    @route("/health")
    def health():
        return {"status": "ok"}
    EOF
  - |
    cat > test_health.py <<'EOF'
    from routes import ROUTES


    def test_health_answers_ok():
        assert ROUTES["/health"]() == {"status": "ok"}
    EOF
verify:
  - python3 -B -c 'import test_health; test_health.test_health_answers_ok()'
"""

SLOW_SPEC = """\
id: take-a-minute
goal: Take a minute over nothing, to be cancelled.
script:
  - sleep 60
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


def git(cwd: Path, *arguments: str) -> None:
    # Without the developer's git configuration: hooks or commit signing there must not interfere.
    environment = os.environ | {"GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    completed = subprocess.run(
        ["git", *arguments], cwd=cwd, env=environment, capture_output=True, text=True, check=False
    )
    if completed.returncode != 0:
        sys.exit(f"demo: git {arguments[0]} failed: {completed.stderr.strip()}")


def create_sample_repository(parent: Path) -> Path:
    """A bare repository `<parent>/service.git` whose `main` holds `SAMPLE_FILES`."""
    work = parent / "service-work"
    work.mkdir()
    git(work, "init", "--quiet", "--initial-branch=main")
    for name, text in SAMPLE_FILES.items():
        (work / name).write_text(text)
    git(work, "add", "--all")
    git(
        work,
        *("-c", "user.name=Demo Author", "-c", "user.email=demo@example.com"),
        *("commit", "--quiet", "--message", "A tiny JSON service"),
    )
    repository = parent / "service.git"
    git(parent, "clone", "--quiet", "--bare", str(work), str(repository))
    shutil.rmtree(work)
    return repository


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


def ckrv(arguments: list[str], environment: dict[str, str], *, show: bool = True) -> str:
    """Run the user's `ckrv` command; with `show`, as a user would type it and see it."""
    if show:
        print(f"\n$ ckrv {' '.join(arguments)}", flush=True)
    completed = subprocess.run(
        [sys.executable, "-m", "ckrv.cli.app", *arguments],
        env=environment,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if show:
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


def submit(spec: Path, repository: Path, environment: dict[str, str]) -> str:
    """Run `spec` on the sample repository's `main`; the job's id."""
    arguments = ["run", "--cloud", str(spec), "--repo", f"file://{repository}"]
    return ckrv([*arguments, "--base-branch", "main", "-q"], environment).strip()


def follow(job_id: str, environment: dict[str, str], *, until_status: str | None = None) -> Job:
    """Poll `ckrv status` until the job ends (or reaches `until_status`), printing each new status.

    Gives up after `JOB_END_SECONDS`, cancelling the job so that nothing keeps running.
    """
    print(f"\n$ ckrv status {job_id} --json   # every {POLL_INTERVAL_SECONDS:g} s", flush=True)
    shown = ""
    deadline = time.monotonic() + JOB_END_SECONDS
    while time.monotonic() < deadline:
        job = Job.from_body(json.loads(ckrv(["status", job_id, "--json"], environment, show=False)))
        if status_text(job) != shown:
            shown = status_text(job)
            print(f"  {shown}", flush=True)
        if job.is_terminal or job.status == until_status:
            return job
        time.sleep(POLL_INTERVAL_SECONDS)
    ckrv(["cancel", job_id], environment)
    sys.exit(f"demo: job {job_id} is still {shown} after {JOB_END_SECONDS:.0f} s")


def job_failure(job: Job) -> str:
    return f"demo: job {job.id} {job.status}: {job.error_message or 'no reason given'}"


def print_summary(job: Job) -> None:
    print(f"\njob {job.id} {job.status}")
    print(f"  outcome:        {job.result_summary}")
    print(f"  result branch:  {job.feature_branch_name}")
    print(f"  took:           {job.elapsed_seconds or 0:.1f} s")


def print_events(job_id: str, gateway: str, token: str) -> None:
    events = httpx.get(
        f"{gateway}/v1/jobs/{job_id}/events",
        headers={"Authorization": f"Bearer {token}"},
    ).json()["events"]
    print("\nthe job's events on JOBS:")
    for event in events:
        print(f"  #{event['sequence']}  {event['type']}  by {event['actor']}")


def user_environment(gateway: str, token: str) -> dict[str, str]:
    """The environment of the demo user's `ckrv` commands."""
    # Both spellings, so a token or URL left in the developer's shell cannot take over.
    return os.environ | {
        "CKRV_API_URL": f"{gateway}/v1",
        "CHAKRAVARTI_API_URL": f"{gateway}/v1",
        "CKRV_TOKEN": token,
        "CHAKRAVARTI_TOKEN": token,
    }


def run_the_health_job(
    endpoints: dict[str, Any], environment: dict[str, str], workdir: Path, repository: Path
) -> None:
    """The main job, followed to its end; its summary, events and diff."""
    spec = workdir / "add-health-endpoint.yaml"
    spec.write_text(HEALTH_SPEC)
    print(f"\nthe spec, {spec.name}:\n{HEALTH_SPEC.rstrip()}")
    job = follow(submit(spec, repository, environment), environment)
    if job.status != "succeeded":
        sys.exit(job_failure(job))
    print_summary(job)
    print_events(job.id, endpoints["services"]["gateway"]["url"], environment["CKRV_TOKEN"])
    ckrv(["diff", job.id], environment)


def cancel_a_running_job(environment: dict[str, str], workdir: Path, repository: Path) -> None:
    spec = workdir / "take-a-minute.yaml"
    spec.write_text(SLOW_SPEC)
    print(f"\nand a job to cancel, {spec.name}:\n{SLOW_SPEC.rstrip()}")
    job_id = submit(spec, repository, environment)
    job = follow(job_id, environment, until_status="running")
    if job.is_terminal:
        sys.exit(job_failure(job))
    ckrv(["cancel", job_id], environment)
    job = follow(job_id, environment)
    if job.status != "cancelled":
        sys.exit(job_failure(job) + " (it should have been cancelled)")


def use_the_stack(endpoints: dict[str, Any], workdir: Path, repository: Path) -> None:
    gateway = endpoints["services"]["gateway"]["url"]
    print(f"\ngateway readiness: {httpx.get(f'{gateway}/readyz').json()}")
    environment = user_environment(gateway, create_demo_user(endpoints))
    run_the_health_job(endpoints, environment, workdir, repository)
    cancel_a_running_job(environment, workdir, repository)
    ckrv(["jobs"], environment)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="ckrv-demo-") as temporary:
        workdir = Path(temporary)
        # PostgreSQL runs as an unprivileged user under root, and must reach its folder.
        workdir.chmod(0o755)
        print(f"demo folder (removed at the end): {workdir}")
        repository = create_sample_repository(workdir)
        print(f"sample repository: {repository} (branch main: {', '.join(SAMPLE_FILES)})")
        state_dir = workdir / "state"
        command = [sys.executable, "-m", "ckrv.services.stack", *stack_arguments(state_dir)]
        # Workloads run in a sandbox that hides the rest of the machine: it may read the
        # sample repository, to clone it.
        stack_environment = os.environ | {
            "CKRV_ENV": "dev",
            "CKRV_RUNNER_SANDBOX_READ_ONLY_PATHS": json.dumps([str(repository)]),
        }
        print("starting a throw-away local stack ...", flush=True)
        process = subprocess.Popen(command, env=stack_environment)
        try:
            endpoints = wait_for_stack(state_dir / STACK_FILE, process)
            use_the_stack(endpoints, workdir, repository)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
        print("\nlocal stack stopped; demo finished")


if __name__ == "__main__":
    main()
