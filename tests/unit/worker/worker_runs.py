"""Running `ckrv-worker run` as the runners do: input files in a private folder, a workspace."""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import yaml

from ckrv.services.stack.process import find_executable
from ckrv.services.worker.job_input import (
    ARTIFACT_NAMES,
    INPUT_DIR_ENV,
    WORKSPACE_ENV,
    WorkerInput,
)
from tests.processes import process_tree

# For jobs that fail before they upload: nothing listens on the discard port.
UNUSED_UPLOAD_URLS = {name: f"http://127.0.0.1:9/unused/{name}" for name in ARTIFACT_NAMES}
RUN_TIMEOUT_SECONDS = 120
# SIGKILL is sent at once, but a process may take a moment to be scheduled and die.
GONE_WITHIN_SECONDS = 10


def gone(pid: int) -> bool:
    """Whether the process (and all below it) ends, or has ended, within a bound."""
    deadline = time.monotonic() + GONE_WITHIN_SECONDS
    while process_tree(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def spec_text(script: list[str] | None = None, **fields: Any) -> str:
    """A spec file's text with an id, an overview, and the given `script:` and other keys."""
    document: dict[str, Any] = {"id": "worker-test", "overview": "Change the sample repository."}
    if script is not None:
        document["script"] = script
    document.update(fields)
    return yaml.safe_dump(document, sort_keys=False)


def make_job(
    *,
    git_repo_url: str,
    spec_content: str,
    job_id: UUID | None = None,
    upload_urls: dict[str, str] | None = None,
    **fields: Any,
) -> WorkerInput:
    """A first attempt on `main` with a minute to run; `fields` override or add the rest."""
    return WorkerInput.model_validate(
        {
            "job_id": job_id or uuid4(),
            "attempt": 1,
            "spec_content": spec_content,
            "git_repo_url": git_repo_url,
            "git_base_branch": "main",
            "time_limit_seconds": 60,
            "upload_urls": upload_urls or UNUSED_UPLOAD_URLS,
            **fields,
        }
    )


@dataclass(frozen=True)
class WorkerRun:
    exit_code: int
    stdout: str
    stderr: str
    workspace: Path

    @property
    def lines(self) -> list[dict[str, Any]]:
        """The log lines, each parsed (a line that is not JSON fails the test here)."""
        return [json.loads(line) for line in self.stdout.splitlines()]

    @property
    def final(self) -> dict[str, Any]:
        return self.lines[-1]

    @property
    def phases(self) -> list[str]:
        return [line["phase"] for line in self.lines if line.get("event") == "phase"]

    @property
    def artifacts(self) -> Path:
        """Where the worker wrote diff.patch, repo.bundle and result.json."""
        return self.workspace / "artifacts"

    def agent_messages(self, agent: str) -> list[str]:
        return [line["message"] for line in self.lines if line["source"] == f"agent:{agent}"]


def write_input(folder: Path, job: WorkerInput, credential: str | None = None) -> Path:
    """The job's input folder, as a runner makes it: private, with the dispatcher's files."""
    folder.mkdir(mode=0o700)
    for name, content in job.files(credential).items():
        (folder / name).write_bytes(content)
    return folder


def worker_environment(input_dir: Path, workspace: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, INPUT_DIR_ENV: str(input_dir), WORKSPACE_ENV: str(workspace), **extra}


def worker_command(*wrapper: str) -> list[str]:
    """`ckrv-worker run`, the installed console script, optionally under a wrapper (strace)."""
    return [*wrapper, str(find_executable("ckrv-worker")), "run"]


def run_worker(
    job: WorkerInput,
    folder: Path,
    *,
    credential: str | None = None,
    environment: dict[str, str] | None = None,
    wrapper: tuple[str, ...] = (),
) -> WorkerRun:
    """Run the worker on `job` to its end, with `folder` holding its input and workspace."""
    input_dir = write_input(folder / "input", job, credential)
    workspace = folder / "workspace"
    completed = subprocess.run(
        worker_command(*wrapper),
        env=worker_environment(input_dir, workspace, **(environment or {})),
        capture_output=True,
        text=True,
        check=False,
        timeout=RUN_TIMEOUT_SECONDS,
    )
    return WorkerRun(completed.returncode, completed.stdout, completed.stderr, workspace)
