"""A job over https with a PAT, end to end: clone, the script agent, artifacts in SeaweedFS."""

from __future__ import annotations

import hashlib
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from ckrv.services.stack.seaweed_server import SeaweedServer
from ckrv.services.worker.job_input import WorkerInput
from ckrv.services.worker.result import JobResult
from tests.git_servers import GitHttpServer, SampleRepository, create_sample_repository
from tests.integration.worker.conftest import Uploads
from tests.unit.cli.git_repos import git
from tests.unit.worker.worker_runs import WorkerRun, make_job, run_worker, spec_text

pytestmark = pytest.mark.integration

SCRIPT = [
    "printf 'Remember the milk.\\n' > NOTES.md",
    "sed -i 's/Hello/Welcome/' src/greeting.py",
    "echo edited two files",
]
VERIFY = ["grep -q Welcome src/greeting.py"]
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@dataclass(frozen=True)
class HttpsJob:
    job: WorkerInput
    run: WorkerRun
    sample: SampleRepository
    uploads: Uploads
    server: GitHttpServer


@pytest.fixture(scope="module")
def https_job(
    git_http_server: GitHttpServer,
    git_repositories: Path,
    s3_server: SeaweedServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> HttpsJob:
    """One successful job, which the tests below look at from different sides."""
    uploads = Uploads(s3_server.client(), s3_server.bucket)
    sample = create_sample_repository(git_repositories, f"https-{uploads.job_id.hex[:8]}")
    job = make_job(
        job_id=uploads.job_id,
        git_repo_url=git_http_server.url_for(sample.path),
        spec_content=spec_text(SCRIPT, verify=VERIFY),
        upload_urls=uploads.urls,
        credential={"provider": "github", "credential_type": "pat"},
    )
    run = run_worker(
        job,
        tmp_path_factory.mktemp("https-job"),
        credential=git_http_server.token,
        environment=git_http_server.client_environment,
    )
    return HttpsJob(job, run, sample, uploads, git_http_server)


def expected_diff(sample: SampleRepository, folder: Path) -> str:
    """The script's change made by hand in a clone of the sample, as git diffs it."""
    clone = folder / "expected"
    git(folder, "clone", "--quiet", str(sample.path), str(clone))
    (clone / "NOTES.md").write_text("Remember the milk.\n")
    greeting = clone / "src" / "greeting.py"
    greeting.write_text(greeting.read_text().replace("Hello", "Welcome"))
    git(clone, "add", "--all")
    return git(clone, "diff", "--cached", "--binary") + "\n"


def test_the_diff_holds_exactly_the_agents_change(https_job: HttpsJob, tmp_path: Path) -> None:
    assert https_job.run.exit_code == 0, https_job.run.stdout + https_job.run.stderr
    diff = https_job.uploads.read("diff.patch").decode()
    assert diff == expected_diff(https_job.sample, tmp_path)


def test_the_bundle_fetches_into_a_branch_of_another_clone(
    https_job: HttpsJob, tmp_path: Path
) -> None:
    assert https_job.run.exit_code == 0, https_job.run.stdout
    bundle = tmp_path / "repo.bundle"
    bundle.write_bytes(https_job.uploads.read("repo.bundle"))
    clone = tmp_path / "elsewhere"
    git(tmp_path, "clone", "--quiet", str(https_job.sample.path), str(clone))
    git(clone, "bundle", "verify", "--quiet", str(bundle))
    branch = https_job.job.feature_branch
    git(clone, "fetch", "--quiet", str(bundle), f"{branch}:result")

    assert (
        git(clone, "diff", "--binary", "main", "result") + "\n"
        == https_job.uploads.read("diff.patch").decode()
    )
    assert git(clone, "rev-parse", "result~1") == https_job.sample.head
    assert git(clone, "log", "-1", "--format=%an <%ae>", "result") == (
        "Chakravarti Cloud <jobs@ckrv.dev>"
    )
    assert f"job {https_job.job.job_id}" in git(clone, "log", "-1", "--format=%B", "result")


def test_result_json_describes_the_change_and_the_stored_artifacts(https_job: HttpsJob) -> None:
    assert https_job.run.exit_code == 0, https_job.run.stdout
    result = JobResult.model_validate_json(https_job.uploads.read("result.json"))

    assert result.job_id == https_job.job.job_id
    assert result.files_changed == ("NOTES.md", "src/greeting.py")
    assert (result.insertions, result.deletions) == (2, 1)
    assert result.base_commit == https_job.sample.head
    assert result.feature_branch == f"ckrv/{https_job.job.job_id.hex[:8]}"
    assert result.summary == f"script changed 2 files (+2 -1) on {result.feature_branch}."
    assert [run.name for run in result.agents] == ["script"]
    assert set(result.metrics) == {"duration_seconds"}
    for name in ("diff.patch", "repo.bundle"):
        stored = https_job.uploads.read(name)
        assert result.artifacts[name].size_bytes == len(stored)
        assert result.artifacts[name].sha256 == hashlib.sha256(stored).hexdigest()
    assert https_job.uploads.stored() == {"diff.patch", "repo.bundle", "result.json"}


def test_the_log_is_json_lines_with_phase_markers_and_the_agents_output(
    https_job: HttpsJob,
) -> None:
    run = https_job.run
    assert run.exit_code == 0, run.stdout
    for line in run.lines:
        assert {"timestamp", "level", "source", "message"} <= line.keys()
        assert TIMESTAMP.match(line["timestamp"]), line
        assert line["level"] in {"info", "warning", "error"}
        assert line["source"] in {"worker", "agent:script"}
    assert run.lines[0]["event"] == "started"
    assert run.phases == ["cloning", "planning", "executing", "verifying", "uploading"]
    assert "edited two files" in run.agent_messages("script")
    verifying = [line["message"] for line in run.lines if line.get("phase") == "verifying"]
    assert f"$ {VERIFY[0]}" in verifying
    executing = [line for line in run.lines if line["source"] == "agent:script"]
    assert all(line["phase"] == "executing" for line in executing)
    assert run.final["event"] == "finished"
    assert (run.final["exit_code"], run.final["reason"]) == (0, None)
    assert run.final["message"].startswith("script changed 2 files")
    assert run.stderr == ""


def test_the_pat_goes_to_the_server_and_nowhere_else(https_job: HttpsJob) -> None:
    run = https_job.run
    assert run.exit_code == 0, run.stdout
    token = https_job.server.token
    # GitHub's user name for tokens, from the credential's provider.
    assert "x-access-token" in https_job.server.users
    assert token not in run.stdout + run.stderr
    git_config = (run.workspace / "repo" / ".git" / "config").read_text()
    assert https_job.server.url_for(https_job.sample.path) in git_config
    assert token not in git_config
    # Nothing of the credential stays in the workspace once the clone is done.
    assert not (run.workspace / "access").exists()
    for path in run.workspace.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_no_process_gets_the_pat_in_its_command_line_or_environment(
    git_http_server: GitHttpServer, git_repositories: Path, uploads: Uploads, tmp_path: Path
) -> None:
    sample = create_sample_repository(git_repositories, f"strace-{uploads.job_id.hex[:8]}")
    job = make_job(
        job_id=uploads.job_id,
        git_repo_url=git_http_server.url_for(sample.path),
        spec_content=spec_text(["echo ok > OK.txt"]),
        upload_urls=uploads.urls,
        credential={"provider": "generic", "credential_type": "pat"},
    )
    trace = tmp_path / "execve.trace"
    # Every program started by the worker or its descendants, with its argv and environment.
    wrapper = ("strace", "-f", "-qq", "-v", "-s", "65536", "-e", "trace=execve", "-o", str(trace))
    run = run_worker(
        job,
        tmp_path,
        credential=git_http_server.token,
        environment=git_http_server.client_environment,
        wrapper=wrapper,
    )

    assert run.exit_code == 0, run.stdout + run.stderr
    executed = trace.read_text()
    assert "git-remote-https" in executed  # the trace did follow git's helpers
    assert "credential.helper" in executed  # and the process that handed the token over
    assert git_http_server.token not in executed
    assert "git" in git_http_server.users


def test_a_wrong_pat_fails_the_clone_without_showing_the_token(
    git_http_server: GitHttpServer, git_repositories: Path, uploads: Uploads, tmp_path: Path
) -> None:
    sample = create_sample_repository(git_repositories, f"wrong-pat-{uploads.job_id.hex[:8]}")
    wrong_token = "ckrv_pat_not-the-right-one-0123456789"
    job = make_job(
        job_id=uploads.job_id,
        git_repo_url=git_http_server.url_for(sample.path),
        spec_content=spec_text(["echo never > NEVER.md"]),
        upload_urls=uploads.urls,
        credential={"provider": "gitlab", "credential_type": "pat"},
    )

    run = run_worker(
        job, tmp_path, credential=wrong_token, environment=git_http_server.client_environment
    )

    assert run.exit_code == 1, run.stdout
    assert run.final["reason"] == "clone_failed"
    assert "Authentication failed" in run.final["message"]
    assert not [line for line in run.lines if line["level"] == "warning"]  # not tried again
    assert git_http_server.url_for(sample.path) in run.final["message"]
    assert wrong_token not in run.stdout + run.stderr
    assert run.phases == ["cloning"]
    assert uploads.stored() == set()


def test_a_missing_base_branch_fails_the_job_naming_it(
    git_http_server: GitHttpServer, git_repositories: Path, tmp_path: Path
) -> None:
    sample = create_sample_repository(git_repositories, f"branchless-{tmp_path.name}")
    job = make_job(
        git_repo_url=git_http_server.url_for(sample.path),
        git_base_branch="release/2.0",
        spec_content=spec_text(["echo never > NEVER.md"]),
        credential={"provider": "github", "credential_type": "pat"},
    )

    run = run_worker(
        job,
        tmp_path,
        credential=git_http_server.token,
        environment=git_http_server.client_environment,
    )

    assert run.exit_code == 1, run.stdout
    assert run.final["reason"] == "branch_not_found"
    assert run.final["message"] == (
        f"the repository {git_http_server.url_for(sample.path)} has no branch 'release/2.0'"
    )


def run_while_the_server_fails(
    server: GitHttpServer,
    repositories: Path,
    uploads: Uploads,
    folder: Path,
    *,
    failures: int,
    script: list[str],
) -> WorkerRun:
    """A job whose repository's next `failures` requests the server answers with 503."""
    sample = create_sample_repository(repositories, f"failing-{uploads.job_id.hex[:8]}")
    server.fail_next_requests(sample.path, failures)
    job = make_job(
        job_id=uploads.job_id,
        git_repo_url=server.url_for(sample.path),
        spec_content=spec_text(script),
        upload_urls=uploads.urls,
        credential={"provider": "github", "credential_type": "pat"},
    )
    return run_worker(job, folder, credential=server.token, environment=server.client_environment)


def test_a_clone_the_server_fails_on_the_way_is_tried_again(
    git_http_server: GitHttpServer, git_repositories: Path, uploads: Uploads, tmp_path: Path
) -> None:
    run = run_while_the_server_fails(
        git_http_server,
        git_repositories,
        uploads,
        tmp_path,
        failures=2,
        script=["echo ok > OK.txt"],
    )

    assert run.exit_code == 0, run.stdout + run.stderr
    retries = [line["message"] for line in run.lines if line["level"] == "warning"]
    assert len(retries) == 2, retries
    assert all("returned error: 503" in retry for retry in retries)
    assert retries[0].endswith("trying again in 1 s")
    assert retries[1].endswith("trying again in 4 s")
    assert "+++ b/OK.txt" in uploads.read("diff.patch").decode()


def test_a_server_that_keeps_failing_fails_the_clone_after_three_tries(
    git_http_server: GitHttpServer, git_repositories: Path, uploads: Uploads, tmp_path: Path
) -> None:
    run = run_while_the_server_fails(
        git_http_server,
        git_repositories,
        uploads,
        tmp_path,
        failures=3,
        script=["echo never > NEVER.md"],
    )

    assert run.exit_code == 1, run.stdout
    assert run.final["reason"] == "clone_failed"
    assert "returned error: 503" in run.final["message"]
    assert len([line for line in run.lines if line["level"] == "warning"]) == 2
    assert uploads.stored() == set()
