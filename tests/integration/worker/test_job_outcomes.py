"""How jobs end: no change, a command agent's usage, the time limit, SIGTERM, a refused upload.

The repositories are local paths (the development flag allows them); the uploads go to the
session's SeaweedFS through presigned URLs.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

from ckrv.services.worker.result import JobResult
from tests.git_servers import SampleRepository, create_sample_repository
from tests.integration.worker.conftest import Uploads
from tests.unit.cli.git_repos import git
from tests.unit.worker.worker_runs import (
    gone,
    make_job,
    run_worker,
    spec_text,
    worker_command,
    worker_environment,
    write_input,
)

pytestmark = pytest.mark.integration

# Long enough never to end by itself during a test.
SLEEP = "sleep 600"
WAIT_FOR_AGENT_SECONDS = 60


@pytest.fixture
def sample(tmp_path: Path) -> SampleRepository:
    repositories = tmp_path / "repositories"
    repositories.mkdir()
    return create_sample_repository(repositories, "sample")


def pid_in(path: Path) -> int:
    return int(path.read_text())


def test_an_agent_that_changes_nothing_succeeds_with_an_empty_diff(
    sample: SampleRepository, uploads: Uploads, tmp_path: Path
) -> None:
    leftover = tmp_path / "leftover.pid"
    job = make_job(
        job_id=uploads.job_id,
        git_repo_url=str(sample.path),
        allow_local_repository=True,
        # The agent leaves a process behind: the worker stops it rather than wait for it.
        spec_content=spec_text([f"{SLEEP} & echo $! > {leftover}", "echo looked around"]),
        upload_urls=uploads.urls,
    )

    run = run_worker(job, tmp_path)

    assert run.exit_code == 0, run.stdout + run.stderr
    assert uploads.read("diff.patch") == b""
    result = JobResult.model_validate_json(uploads.read("result.json"))
    assert result.files_changed == ()
    assert (result.insertions, result.deletions) == (0, 0)
    assert result.head_commit == result.base_commit == sample.head
    assert result.summary.startswith("No changes:")
    assert "the diff is empty" in run.final["message"]
    bundle = tmp_path / "repo.bundle"
    bundle.write_bytes(uploads.read("repo.bundle"))
    assert git(tmp_path, "bundle", "list-heads", str(bundle)) == (
        f"{sample.head} refs/heads/{job.feature_branch}"
    )
    assert gone(pid_in(leftover))


def test_a_command_agent_gets_the_prompt_on_stdin_and_its_usage_is_reported(
    sample: SampleRepository, uploads: Uploads, tmp_path: Path
) -> None:
    # A stand-in for the Claude Code CLI (the model behind it is a paid API): it keeps what
    # it was given, edits a file, and reports its usage as the real one does.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_claude = bin_dir / "claude"
    fake_claude.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$@" > {tmp_path}/claude.argv\n'
        f"cat > {tmp_path}/claude.stdin\n"
        """echo '{"type":"system","subtype":"init"}'\n"""
        "printf 'from claude\\n' > CLAUDE.md\n"
        """echo '{"type":"result","subtype":"success","total_cost_usd":0.0123,"""
        """"usage":{"input_tokens":100,"cache_read_input_tokens":50,"output_tokens":20}}'\n"""
    )
    fake_claude.chmod(fake_claude.stat().st_mode | stat.S_IXUSR)
    job = make_job(
        job_id=uploads.job_id,
        git_repo_url=str(sample.path),
        allow_local_repository=True,
        spec_content=spec_text(goal="Write CLAUDE.md."),
        upload_urls=uploads.urls,
    )

    run = run_worker(job, tmp_path, environment={"PATH": f"{bin_dir}:{os.environ['PATH']}"})

    assert run.exit_code == 0, run.stdout + run.stderr
    assert (tmp_path / "claude.argv").read_text().split() == [
        "--print",
        "--output-format",
        "stream-json",
        "--verbose",
        "--dangerously-skip-permissions",
    ]
    prompt = (tmp_path / "claude.stdin").read_text()
    assert job.spec_content in prompt
    assert job.feature_branch in prompt
    assert any('"type":"result"' in message for message in run.agent_messages("claude"))
    result = JobResult.model_validate_json(uploads.read("result.json"))
    assert result.files_changed == ("CLAUDE.md",)
    assert result.metrics["input_tokens"] == 150
    assert result.metrics["output_tokens"] == 20
    assert result.metrics["cost_usd"] == pytest.approx(0.0123)
    assert result.agents[0].name == "claude"


def test_past_the_time_limit_the_agent_is_killed_and_nothing_uploaded(
    sample: SampleRepository, uploads: Uploads, tmp_path: Path
) -> None:
    agent, background = tmp_path / "agent.pid", tmp_path / "background.pid"
    job = make_job(
        job_id=uploads.job_id,
        git_repo_url=str(sample.path),
        allow_local_repository=True,
        time_limit_seconds=3,
        spec_content=spec_text(
            [f"{SLEEP} & echo $! > {background}; echo $$ > {agent}; exec {SLEEP}"]
        ),
        upload_urls=uploads.urls,
    )

    run = run_worker(job, tmp_path)

    assert run.exit_code == 1, run.stdout
    assert run.final["reason"] == "timeout"
    assert run.final["message"] == "the job ran past its time limit of 3 seconds"
    assert run.phases == ["cloning", "planning", "executing"]
    assert gone(pid_in(agent))
    assert gone(pid_in(background))
    assert uploads.stored() == set()


def test_sigterm_stops_the_agents_processes_and_the_worker(
    sample: SampleRepository, tmp_path: Path
) -> None:
    agent, background = tmp_path / "agent.pid", tmp_path / "background.pid"
    job = make_job(
        git_repo_url=str(sample.path),
        allow_local_repository=True,
        spec_content=spec_text(
            [f"{SLEEP} & echo $! > {background}; echo $$ > {agent}; exec {SLEEP}"]
        ),
    )
    input_dir = write_input(tmp_path / "input", job)
    with subprocess.Popen(
        worker_command(),
        env=worker_environment(input_dir, tmp_path / "workspace"),
        stdout=subprocess.PIPE,
        text=True,
    ) as worker:
        deadline = time.monotonic() + WAIT_FOR_AGENT_SECONDS
        while not (agent.exists() and agent.read_text().strip()):
            assert worker.poll() is None, "the worker ended before its agent started"
            assert time.monotonic() < deadline, "the agent did not start"
            time.sleep(0.02)
        worker.send_signal(signal.SIGTERM)
        stdout, _ = worker.communicate(timeout=WAIT_FOR_AGENT_SECONDS)

    assert worker.returncode == 143
    final = stdout.splitlines()[-1]
    assert '"reason": "terminated"' in final
    assert gone(pid_in(agent))
    assert gone(pid_in(background))


def with_bad_signature(url: str) -> str:
    parts = urlsplit(url)
    query = [
        (name, "0" * len(value) if name == "X-Amz-Signature" else value)
        for name, value in parse_qsl(parts.query)
    ]
    return urlunsplit(parts._replace(query=urlencode(query)))


def test_an_upload_the_storage_refuses_is_an_infrastructure_error(
    sample: SampleRepository, uploads: Uploads, tmp_path: Path
) -> None:
    urls = {**uploads.urls, "repo.bundle": with_bad_signature(uploads.urls["repo.bundle"])}
    job = make_job(
        job_id=uploads.job_id,
        git_repo_url=str(sample.path),
        allow_local_repository=True,
        spec_content=spec_text(["echo change > CHANGE.md"]),
        upload_urls=urls,
    )

    run = run_worker(job, tmp_path)

    assert run.exit_code == 2, run.stdout
    assert run.final["reason"] == "upload_failed"
    assert "repo.bundle" in run.final["message"]
    assert "HTTP 403 SignatureDoesNotMatch" in run.final["message"]
    # Logged without the presigned query, which carries the signature.
    assert "X-Amz-" not in run.stdout
    assert uploads.stored() == {"diff.patch"}
