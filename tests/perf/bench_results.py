"""Results for users: how soon a finished job's diff can be downloaded, and `ckrv pull` of 50 MB.

The whole local stack runs as in the execution benchmark (`bench_execution.local_stack`),
and jobs run for real on its local runner: the watcher records each verified result
(`job.artifact-stored`) before the job's `job.succeeded`.

- Terminal event to downloadable diff: DOWNLOAD_JOBS jobs of one enterprise user, one
  at a time (a few warm-up jobs first). From the moment the job's terminal event
  arrives on a NATS subscription to `jobs.>`, made before anything is submitted,
  `GET /v1/jobs/{id}/artifacts/diff` is sent again and again until it answers 200; the
  figure is the time to that answer. Also counted: how many first requests succeeded.
- `ckrv pull` of a large result: a repository whose `main` holds LARGE_BYTES of random
  (incompressible) data, so the bundle of a job's branch is about that large; one job
  on it, then the real CLI as a subprocess (`python -m ckrv.cli.app pull ID`) in a clone
  of it, PULL_RUNS times, the branch deleted between runs. The time includes the
  interpreter's start, the downloads (bundle, result.json) and `git fetch`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from uuid import UUID

import httpx
import nats

from tests.git_servers import create_sample_repository
from tests.perf.bench_execution import (
    ENDS,
    JOB_END_SECONDS,
    EventArrivals,
    LocalStack,
    enterprise_tokens,
    local_stack,
    submit,
)
from tests.perf.report import BenchmarkResult, Figure, latency_figures
from tests.unit.cli.git_repos import git

WARM_UP_JOBS = 3
DOWNLOAD_JOBS = 60
DOWNLOAD_TARGET_P99_MS = 500.0
# A diff that no request finds this long after its job's end is a failure, not a sample.
DOWNLOAD_GIVE_UP_SECONDS = 10.0
RETRY_SECONDS = 0.001
LARGE_BYTES = 50 * 1024 * 1024
PULL_RUNS = 5
PULL_TIMEOUT_SECONDS = 300.0


async def diff_downloadable(
    client: httpx.AsyncClient, arrivals: EventArrivals, repository: str
) -> tuple[float, bool]:
    """Run one job; seconds from its terminal event's arrival to its diff's download, and
    whether the first request already had it."""
    job_id, _ = await submit(client, repository)
    end = await arrivals.first_of(job_id, ENDS, JOB_END_SECONDS)
    if end != "succeeded":
        raise RuntimeError(f"job {job_id} {end}")
    ended = arrivals.arrived[job_id][end]
    requests = 0
    while True:
        response = await client.get(f"/jobs/{job_id}/artifacts/diff")
        requests += 1
        if response.status_code == httpx.codes.OK:
            downloaded = time.perf_counter()
            break
        if time.perf_counter() - ended > DOWNLOAD_GIVE_UP_SECONDS:
            raise RuntimeError(
                f"the diff of job {job_id} was not there {DOWNLOAD_GIVE_UP_SECONDS:g} s after "
                f"its end: {response.status_code} {response.text}"
            )
        await asyncio.sleep(RETRY_SECONDS)
    if "DONE.md" not in response.text:
        raise RuntimeError(f"the diff of job {job_id} is not the job's: {response.text[:200]}")
    return downloaded - ended, requests == 1


def large_repository(parent: Path) -> Path:
    """A bare repository whose `main` holds LARGE_BYTES of random data in one file."""
    sample = create_sample_repository(parent, "large")
    work = Path(tempfile.mkdtemp(prefix="ckrv-bench-large-"))
    try:
        git(work, "clone", "--quiet", str(sample.path), "clone")
        clone = work / "clone"
        (clone / "data.bin").write_bytes(os.urandom(LARGE_BYTES))
        git(clone, "add", "data.bin")
        git(
            clone,
            "-c",
            "user.name=Bench",
            "-c",
            "user.email=bench@example.com",
            "commit",
            "--quiet",
            "-m",
            "Add 50 MB of data",
        )
        git(clone, "push", "--quiet", "origin", "main")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return sample.path


def cli_environment(api_url: str, token: str, config_home: Path) -> dict[str, str]:
    """The user's environment: the API and token, no stored login of this machine."""
    inherited = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("CHAKRAVARTI_", "CKRV_"))
    }
    return inherited | {
        "CKRV_API_URL": api_url,
        "CKRV_TOKEN": token,
        "XDG_CONFIG_HOME": str(config_home),
        "CKRV_CREDENTIAL_STORE": "file",
    }


async def pull_times(
    stack: LocalStack, client: httpx.AsyncClient, arrivals: EventArrivals, token: str
) -> tuple[list[float], int]:
    """Seconds of each `ckrv pull` of a job on the large repository, and its bundle's size."""
    repository = await asyncio.to_thread(large_repository, Path(stack.repository).parent)
    job_id, _ = await submit(client, str(repository))
    end = await arrivals.first_of(job_id, ENDS, JOB_END_SECONDS)
    if end != "succeeded":
        job = (await client.get(f"/jobs/{job_id}")).json()
        raise RuntimeError(f"the large job {job_id} {end}: {job.get('error_message')}")
    listed = (await client.get(f"/jobs/{job_id}/artifacts")).json()["artifacts"]
    bundle_bytes = next(item["size"] for item in listed if item["name"] == "repo.bundle")
    folder = Path(tempfile.mkdtemp(prefix="ckrv-bench-pull-"))
    try:
        work = folder / "work"
        git(folder, "clone", "--quiet", str(repository), str(work))
        environment = cli_environment(stack.gateway_api_url, token, folder / "config")
        times = [await asyncio.to_thread(timed_pull, job_id, work, environment)]
        for _ in range(PULL_RUNS - 1):
            git(work, "branch", "--quiet", "-D", f"ckrv/{job_id.hex[:8]}")
            times.append(await asyncio.to_thread(timed_pull, job_id, work, environment))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return times, bundle_bytes


def timed_pull(job_id: UUID, work: Path, environment: dict[str, str]) -> float:
    began = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-m", "ckrv.cli.app", "pull", str(job_id)],
        cwd=work,
        env=environment,
        capture_output=True,
        text=True,
        timeout=PULL_TIMEOUT_SECONDS,
        check=False,
    )
    elapsed = time.perf_counter() - began
    if completed.returncode != 0:
        raise RuntimeError(f"ckrv pull exited {completed.returncode}: {completed.stderr}")
    return elapsed


async def run() -> BenchmarkResult:
    async with local_stack() as stack:
        (token,) = await enterprise_tokens(stack.database_url, 1)
        arrivals = EventArrivals()
        connection = await nats.connect(stack.nats_url)
        client = httpx.AsyncClient(
            base_url=stack.gateway_api_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )
        try:
            await connection.subscribe("jobs.>", cb=arrivals.note)
            # Round trip: the server has the subscription before the first submission.
            await connection.flush()
            samples = [
                await diff_downloadable(client, arrivals, stack.repository)
                for _ in range(WARM_UP_JOBS + DOWNLOAD_JOBS)
            ][WARM_UP_JOBS:]
            pulls, bundle_bytes = await pull_times(stack, client, arrivals, token)
        finally:
            await client.aclose()
            await connection.close()
    latencies = [seconds for seconds, _ in samples]
    first_tries = sum(first for _, first in samples)
    return BenchmarkResult(
        name="results",
        description=(
            "Real jobs on the local stack: from a job's terminal event (as a NATS subscriber "
            "sees it) to the first successful GET of its diff, one job at a time; and "
            f"`ckrv pull` of a job whose bundle is about {LARGE_BYTES // 2**20} MB, run "
            "as a subprocess in a clone."
        ),
        figures=[
            *latency_figures(
                "terminal event to diff downloaded", latencies, DOWNLOAD_TARGET_P99_MS
            ),
            Figure(
                "diff there at the first request",
                first_tries,
                "jobs",
                target=DOWNLOAD_JOBS,
            ),
            Figure(
                "ckrv pull, large bundle: median",
                statistics.median(pulls),
                "s",
                higher_is_better=False,
            ),
            Figure("ckrv pull, large bundle: slowest", max(pulls), "s", higher_is_better=False),
        ],
        parameters={
            "warm_up_jobs": WARM_UP_JOBS,
            "download_jobs": DOWNLOAD_JOBS,
            "bundle_bytes": bundle_bytes,
            "pull_runs": PULL_RUNS,
            "pull_seconds": [round(seconds, 3) for seconds in pulls],
        },
    )
