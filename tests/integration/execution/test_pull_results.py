"""A job's result back in the user's repository: a real job, then `ckrv pull` and `ckrv diff`.

The job runs on the module's services and stores its results; the `ckrv`
command runs as a user runs it (`python -m ckrv.cli.app`) in clones of the
job's repository, against the module's gateway.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from uuid import UUID, uuid4

import httpx
import pytest

from tests.cli_runs import Completed, run_ckrv, user_environment
from tests.git_servers import create_sample_repository
from tests.integration.execution.conftest import Execution, add_pat, submit, wait_for
from tests.unit.cli.git_repos import git, isolate_git

pytestmark = pytest.mark.e2e

FILES = {
    "README.md": "# Notes\n",
    "src/greeting.py": "GREETING = 'Hello'\n",
}
# What the job's agent leaves: one file changed, one added.
SCRIPT = ["echo \"GREETING = 'Hello, world'\" > src/greeting.py", "echo 'rate limiter' > LIMITS.md"]
PRODUCED = {
    "README.md": "# Notes\n",
    "src/greeting.py": "GREETING = 'Hello, world'\n",
    "LIMITS.md": "rate limiter\n",
}


@dataclass(frozen=True)
class FinishedJob:
    job_id: UUID
    repository: Path
    token: str
    api_url: str

    @property
    def branch(self) -> str:
        return f"ckrv/{self.job_id.hex[:8]}"


@pytest.fixture(scope="module")
def finished_job(execution: Execution) -> FinishedJob:
    sample = create_sample_repository(execution.repositories, f"pull-{uuid4().hex[:8]}", FILES)
    email = f"puller-{uuid4().hex[:12]}@example.com"
    token = execution.gateway.token(email, "pro")
    with httpx.Client(
        base_url=execution.gateway.api_url,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    ) as client:
        credential = add_pat(client, execution.git.token)
        job_id = submit(client, execution.git.url_for(sample.path), SCRIPT, credential=credential)
        job = wait_for(client, job_id)
    assert job["status"] == "succeeded", job["error_message"]
    return FinishedJob(job_id, sample.path, token, execution.gateway.api_url)


@pytest.fixture
def git_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Git as on the user's machine, for the tests and `ckrv` alike: an identity, no
    settings of the machine running the tests."""
    home = tmp_path / "home"
    home.mkdir()
    return isolate_git(monkeypatch, home)


@pytest.fixture
def clone(finished_job: FinishedJob, tmp_path: Path, git_environment: dict[str, str]) -> Path:
    """The user's clone of the job's repository, as it was when the job started."""
    work = tmp_path / "work"
    git(tmp_path, "clone", "--quiet", str(finished_job.repository), str(work))
    return work


def ckrv(job: FinishedJob, cwd: Path, environment: dict[str, str], *args: str) -> Completed:
    variables = user_environment(
        cwd.parent / ".config", CHAKRAVARTI_API_URL=job.api_url, CHAKRAVARTI_TOKEN=job.token
    )
    # Git as `environment` says, not as the machine running the tests has it.
    variables = {name: value for name, value in variables.items() if not name.startswith("GIT_")}
    return run_ckrv(args, env=variables | environment, cwd=cwd, timeout=120)


def tree(work: Path, revision: str) -> dict[str, str]:
    """Every file of `revision` with its text."""
    paths = git(work, "ls-tree", "-r", "--name-only", revision).splitlines()
    return {path: git(work, "show", f"{revision}:{path}") + "\n" for path in paths}


def working_files(work: Path) -> dict[str, str]:
    return {
        str(path.relative_to(work)): path.read_text()
        for path in sorted(work.rglob("*"))
        if path.is_file() and ".git" not in path.relative_to(work).parts
    }


def snapshot(work: Path) -> tuple[str, str, dict[str, str]]:
    """HEAD, the status and every file: what "nothing changed" means."""
    return (
        git(work, "rev-parse", "HEAD"),
        git(work, "status", "--porcelain", "--untracked-files=all"),
        working_files(work),
    )


def test_pull_fetches_the_result_into_a_branch_and_leaves_the_working_tree(
    finished_job: FinishedJob, clone: Path, git_environment: dict[str, str]
) -> None:
    before = snapshot(clone)

    pulled = ckrv(finished_job, clone, git_environment, "pull", str(finished_job.job_id))

    assert pulled.exit_code == 0, pulled.stderr
    assert tree(clone, finished_job.branch) == PRODUCED
    assert git(clone, "rev-parse", f"{finished_job.branch}~1") == git(clone, "rev-parse", "main")
    assert snapshot(clone) == before
    assert f"into branch {finished_job.branch}" in pulled.stdout
    assert "2 files changed, 2 insertions(+), 1 deletion(-)" in pulled.stdout
    assert f"git merge {finished_job.branch}" in pulled.stdout

    # The branch merges as the hint says.
    git(clone, "merge", "--quiet", "--ff-only", finished_job.branch)
    assert working_files(clone) == PRODUCED


def test_pull_apply_on_a_clean_tree_gives_the_same_files(
    finished_job: FinishedJob, clone: Path, git_environment: dict[str, str], tmp_path: Path
) -> None:
    patch_file = tmp_path / "job.patch"
    worktree = tmp_path / "result"

    applied = ckrv(
        finished_job,
        clone,
        git_environment,
        "pull",
        str(finished_job.job_id),
        "--apply",
        "--output",
        str(patch_file),
        "--worktree",
        str(worktree),
    )

    assert applied.exit_code == 0, applied.stderr
    assert working_files(clone) == PRODUCED
    assert git(clone, "status", "--porcelain").splitlines() == [
        "A  LIMITS.md",
        "M  src/greeting.py",
    ]
    assert working_files(worktree) == PRODUCED
    diff = ckrv(finished_job, clone, git_environment, "diff", str(finished_job.job_id))
    assert diff.exit_code == 0, diff.stderr
    assert patch_file.read_text() == diff.stdout
    assert "+rate limiter" in diff.stdout


def test_pull_apply_on_a_conflicting_tree_changes_nothing(
    finished_job: FinishedJob, clone: Path, git_environment: dict[str, str]
) -> None:
    (clone / "src/greeting.py").write_text("GREETING = 'Good morning'\n")
    git(clone, "commit", "--quiet", "-am", "A greeting of my own")
    before = snapshot(clone)

    applied = ckrv(
        finished_job, clone, git_environment, "pull", str(finished_job.job_id), "--apply"
    )

    assert applied.exit_code == 1
    assert "conflict with your working tree in src/greeting.py; nothing was changed" in (
        applied.stderr
    )
    assert f"git merge {finished_job.branch}" in applied.stderr
    assert snapshot(clone) == before


def test_diff_stat_summarises_the_changes(
    finished_job: FinishedJob, tmp_path: Path, git_environment: dict[str, str]
) -> None:
    # Outside any repository: the diff needs none.
    stat = ckrv(finished_job, tmp_path, git_environment, "diff", "--stat", str(finished_job.job_id))

    assert stat.exit_code == 0, stat.stderr
    lines = stat.stdout.splitlines()
    assert [line.split("|")[0].strip() for line in lines[:-1]] == ["LIMITS.md", "src/greeting.py"]
    assert lines[-1].strip() == "2 files changed, 2 insertions(+), 1 deletion(-)"
