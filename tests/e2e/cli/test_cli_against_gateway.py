"""The `ckrv` command, run as a user runs it, against the real gateway process.

Each test signs in as a fresh user through the gateway fixture's development
tokens and calls `python -m ckrv.cli.app` with CHAKRAVARTI_API_URL and
CHAKRAVARTI_TOKEN, as the installed `ckrv` would be called.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cli_runs import Completed, run_ckrv, user_environment
from tests.running_gateway import RunningGateway
from tests.unit.cli.git_repos import git, isolate_git

pytestmark = pytest.mark.e2e

SPEC = "id: add-greeting\ngoal: Add a greeting to the README.\n"
# Accepted by the gateway (https, host and path) but never resolvable: nothing is fetched.
REPO = "https://git.invalid/acme/app.git"
FREE_TIER_JOBS = 10


@dataclass
class User:
    """A fresh user of the gateway, driving it through the CLI."""

    gateway: RunningGateway
    tier: str
    workdir: Path
    email: str = ""

    def __post_init__(self) -> None:
        self.email = self.email or f"cli-{uuid.uuid4().hex[:12]}@example.com"

    def ckrv(self, *args: str, cwd: Path | None = None) -> Completed:
        env = user_environment(
            self.workdir / ".config",
            CHAKRAVARTI_API_URL=self.gateway.api_url,
            CHAKRAVARTI_TOKEN=self.gateway.token(self.email, self.tier),
            CKRV_CREDENTIAL_STORE="file",
        )
        return run_ckrv(args, env=env, cwd=cwd or self.workdir, timeout=120)

    def submit(self, spec: Path) -> str:
        result = self.ckrv(
            "run", "--cloud", str(spec), "--repo", REPO, "--base-branch", "main", "-q"
        )
        assert result.exit_code == 0, result.stderr
        return result.stdout.strip()


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC)
    return path


UserFactory = Callable[..., User]


@pytest.fixture
def new_user(gateway: RunningGateway, tmp_path: Path) -> UserFactory:
    """`new_user(tier="free")`: a user nobody has seen before."""

    def make(tier: str = "free") -> User:
        return User(gateway, tier, tmp_path)

    return make


def test_run_status_jobs_cancel(new_user: UserFactory, spec: Path) -> None:
    user = new_user("pro")

    submitted = user.ckrv(
        "run", "--cloud", str(spec), "--repo", REPO, "--base-branch", "main", "--json"
    )
    assert submitted.exit_code == 0, submitted.stderr
    job = submitted.json()
    job_id = job["id"]
    assert (job["status"], job["git_repo_url"], job["git_base_branch"]) == ("pending", REPO, "main")
    assert job["spec_id"] == "add-greeting"

    status = user.ckrv("status", job_id)
    assert status.exit_code == 0, status.stderr
    assert f"Job:            {job_id}" in status.stdout
    assert "Status:         pending" in status.stdout
    assert f"ckrv logs -f {job_id}" in status.stdout

    listed = user.ckrv("jobs", "--json")
    assert listed.exit_code == 0, listed.stderr
    assert [listed_job["id"] for listed_job in listed.json()["jobs"]] == [job_id]
    table = user.ckrv("jobs")
    assert table.stdout.splitlines()[0].split() == [
        "ID",
        "STATUS",
        "PHASE",
        "REPO",
        "BRANCH",
        "CREATED",
        "ELAPSED",
    ]
    assert table.stdout.splitlines()[1].startswith(job_id[:8])
    # The short id the table shows is enough to name the job.
    assert user.ckrv("status", "-q", job_id[:8]).stdout.strip() == "pending"

    cancelled = user.ckrv("cancel", job_id)
    assert cancelled.exit_code == 0, cancelled.stderr
    assert job_id in cancelled.stdout

    after = user.ckrv("status", job_id, "--json")
    assert after.exit_code == 0, after.stderr
    assert after.json()["cancel_requested"] is True
    # `cancelled` is reached once the dispatcher has seen the request; the gateway alone
    # shows the request on the still-pending job.
    assert after.json()["status"] in {"pending", "cancelled"}
    human = user.ckrv("status", job_id).stdout
    assert "Cancellation:   requested" in human or "Status:         cancelled" in human


def test_an_unknown_job_is_not_found(new_user: UserFactory) -> None:
    user = new_user()
    unknown = str(uuid.uuid4())
    for command in ("status", "cancel"):
        result = user.ckrv(command, unknown)
        assert result.exit_code == 1
        assert result.stdout == ""
        assert result.stderr.startswith("Error: ")
        assert "not found" in result.stderr
    as_json = user.ckrv("status", unknown, "--json")
    assert json.loads(as_json.stderr)["error"] == "not_found"


def test_another_users_job_is_not_found(new_user: UserFactory, spec: Path) -> None:
    owner = new_user()
    stranger = new_user()
    job_id = owner.submit(spec)
    for command in ("status", "cancel"):
        result = stranger.ckrv(command, job_id)
        assert result.exit_code == 1
        assert "not found" in result.stderr
    assert stranger.ckrv("jobs", "-q").stdout == ""
    assert owner.ckrv("status", "-q", job_id).stdout.strip() == "pending"


def test_the_free_tier_stops_after_its_monthly_jobs(new_user: UserFactory, spec: Path) -> None:
    user = new_user("free")
    for _ in range(FREE_TIER_JOBS):
        user.submit(spec)
    refused = user.ckrv("run", "--cloud", str(spec), "--repo", REPO, "--base-branch", "main")
    assert refused.exit_code == 1
    assert refused.stdout == ""
    assert refused.stderr.startswith("Error: the free tier includes 10 jobs a month")
    assert "Your quota resets at" in refused.stderr
    listed = user.ckrv("jobs", "--json", "--limit", "100").json()["jobs"]
    assert len(listed) == FREE_TIER_JOBS


def test_run_takes_repository_and_branch_from_the_checkout(
    new_user: UserFactory, spec: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = new_user()
    home = tmp_path / "home"
    home.mkdir()
    isolate_git(monkeypatch, home)
    work = tmp_path / "checkout"
    work.mkdir()
    git(work, "init", "-q", "-b", "feature-greeting")
    (work / "README.md").write_text("hello\n")
    git(work, "add", "README.md")
    git(work, "commit", "-q", "-m", "start")
    git(work, "remote", "add", "origin", REPO)

    result = user.ckrv("run", "--cloud", str(spec), "--json", cwd=work)
    assert result.exit_code == 0, result.stderr
    job = result.json()
    assert (job["git_repo_url"], job["git_base_branch"]) == (REPO, "feature-greeting")
    assert "Warning: branch 'feature-greeting' has no upstream" in result.stderr


def test_a_rejected_submission_names_the_field(new_user: UserFactory, spec: Path) -> None:
    user = new_user()
    result = user.ckrv(
        "run",
        "--cloud",
        str(spec),
        "--repo",
        "http://example.com/acme/app.git",
        "--base-branch",
        "main",
    )
    assert result.exit_code == 1
    assert "git_repo_url" in result.stderr


def test_a_bad_token_is_refused(gateway: RunningGateway, tmp_path: Path) -> None:
    env = user_environment(
        tmp_path / ".config", CHAKRAVARTI_API_URL=gateway.api_url, CHAKRAVARTI_TOKEN="nonsense"
    )
    completed = run_ckrv(["jobs"], env=env, cwd=tmp_path, timeout=120)
    assert completed.exit_code == 1
    assert "access token was refused" in completed.stderr
