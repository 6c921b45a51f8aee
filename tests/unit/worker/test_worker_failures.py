"""`ckrv-worker run` on local repositories: how a job that cannot succeed ends.

Every case stops before the upload, so none needs a server; the exit code and the final
log line's reason say why.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ckrv.services.stack.process import find_executable
from ckrv.services.worker.job_input import JOB_FILE
from tests.git_servers import SampleRepository, create_sample_repository
from tests.unit.worker.worker_runs import (
    WorkerRun,
    make_job,
    run_worker,
    spec_text,
    worker_command,
    worker_environment,
)


@pytest.fixture
def sample(tmp_path: Path) -> SampleRepository:
    repositories = tmp_path / "repositories"
    repositories.mkdir()
    return create_sample_repository(repositories, "sample")


def run_local(sample: SampleRepository, folder: Path, **fields: Any) -> WorkerRun:
    fields.setdefault("spec_content", spec_text(["echo change > CHANGE.md"]))
    environment = fields.pop("environment", None)
    job = make_job(git_repo_url=str(sample.path), allow_local_repository=True, **fields)
    return run_worker(job, folder, environment=environment)


def test_a_failing_script_command_fails_the_job(sample: SampleRepository, tmp_path: Path) -> None:
    run = run_local(sample, tmp_path, spec_content=spec_text(["echo trying", "exit 7", "echo x"]))

    assert run.exit_code == 1
    assert run.final["reason"] == "agent_failed"
    assert run.final["message"] == "the script command `exit 7` exited with status 7"
    assert run.agent_messages("script") == ["$ echo trying", "trying", "$ exit 7"]


def test_a_failing_verification_command_exits_with_3(
    sample: SampleRepository, tmp_path: Path
) -> None:
    spec = spec_text(["echo change > CHANGE.md"], verify=["test -s CHANGE.md", "test -f TESTS.md"])

    run = run_local(sample, tmp_path, spec_content=spec)

    assert run.exit_code == 3
    assert run.final["reason"] == "verification_failed"
    assert "`test -f TESTS.md` exited with status 1" in run.final["message"]
    assert run.phases == ["cloning", "planning", "executing", "verifying"]


def test_an_agent_that_switches_branches_fails_the_job(
    sample: SampleRepository, tmp_path: Path
) -> None:
    run = run_local(sample, tmp_path, spec_content=spec_text(["git switch --quiet -c mine"]))

    assert run.exit_code == 1
    assert run.final["reason"] == "branch_changed"
    assert "left mine checked out" in run.final["message"]


def test_an_unknown_agent_fails_the_job(sample: SampleRepository, tmp_path: Path) -> None:
    run = run_local(sample, tmp_path, agents=("devin",))

    assert run.exit_code == 1
    assert run.final["reason"] == "unknown_agent"


def test_an_agent_cli_missing_from_the_workload_is_an_infrastructure_error(
    sample: SampleRepository, tmp_path: Path
) -> None:
    run = run_local(sample, tmp_path, agents=("gemini",), environment={"PATH": "/usr/bin:/bin"})

    assert run.exit_code == 2
    assert run.final["reason"] == "agent_unavailable"
    assert "`gemini` is not installed" in run.final["message"]


def test_a_local_repository_needs_the_development_flag(
    sample: SampleRepository, tmp_path: Path
) -> None:
    job = make_job(git_repo_url=str(sample.path), spec_content=spec_text(["true"]))

    run = run_worker(job, tmp_path)

    assert run.exit_code == 1
    assert run.final["reason"] == "clone_refused"
    assert "local paths and file:// URLs cannot be reached" in run.final["message"]


def test_a_workspace_a_run_has_used_is_refused(sample: SampleRepository, tmp_path: Path) -> None:
    (tmp_path / "workspace").mkdir()
    (tmp_path / "workspace" / "repo").mkdir()

    run = run_local(sample, tmp_path)

    assert run.exit_code == 2
    assert run.final["reason"] == "workspace_in_use"
    assert "has repo already" in run.final["message"]


def test_a_workspace_may_hold_other_files(sample: SampleRepository, tmp_path: Path) -> None:
    # The local runner makes the workspace HOME too: an agent's dotfiles may be there first.
    (tmp_path / "workspace" / ".config").mkdir(parents=True)

    run = run_local(sample, tmp_path, spec_content=spec_text(["exit 1"]))

    assert run.final["reason"] == "agent_failed"


def test_without_a_workspace_a_temporary_one_is_used_and_removed(
    sample: SampleRepository, tmp_path: Path
) -> None:
    job = make_job(
        git_repo_url=str(sample.path),
        allow_local_repository=True,
        spec_content=spec_text(["pwd", "exit 1"]),
    )
    input_dir = tmp_path / "input"
    input_dir.mkdir()
    (input_dir / JOB_FILE).write_bytes(job.files()[JOB_FILE])
    environment = worker_environment(input_dir, tmp_path)
    del environment["CKRV_WORKSPACE"]

    completed = subprocess.run(
        worker_command(), env=environment, capture_output=True, text=True, check=False
    )

    assert completed.returncode == 1
    run = WorkerRun(completed.returncode, completed.stdout, completed.stderr, tmp_path)
    clone = Path(run.agent_messages("script")[1])
    assert clone.name == "repo"
    assert not clone.parent.exists()


@pytest.mark.parametrize("job_json", [None, "{", '{"job_id": "not-a-uuid"}'])
def test_missing_or_bad_input_is_an_infrastructure_error(
    job_json: str | None, tmp_path: Path
) -> None:
    input_dir = tmp_path / "input"
    input_dir.mkdir()
    if job_json is not None:
        (input_dir / JOB_FILE).write_text(job_json)

    completed = subprocess.run(
        worker_command(),
        env=worker_environment(input_dir, tmp_path / "workspace"),
        capture_output=True,
        text=True,
        check=False,
    )

    run = WorkerRun(completed.returncode, completed.stdout, completed.stderr, tmp_path)
    assert run.exit_code == 2
    assert run.lines[0]["event"] == "started"
    assert run.final["reason"] in {"input_unreadable", "input_invalid"}
    assert str(input_dir / JOB_FILE) in run.final["message"]


def test_the_command_line_has_run_and_help() -> None:
    worker = str(find_executable("ckrv-worker"))
    helped = subprocess.run([worker, "--help"], capture_output=True, text=True, check=False)
    bare = subprocess.run([worker], capture_output=True, text=True, check=False)

    assert helped.returncode == 0
    assert "run" in helped.stdout
    assert bare.returncode == 2
    assert "required: COMMAND" in bare.stderr


def test_starting_imports_nothing_heavy_before_the_first_line() -> None:
    probe = (
        "import sys, ckrv.services.worker.main; "
        "print(sorted(name for name in ('pydantic', 'yaml', 'httpx', 'cyclopts', "
        "'ckrv.events.catalog') if name in sys.modules))"
    )
    completed = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )

    assert completed.stdout.strip() == "[]"
