"""`ckrv pull` and `ckrv diff` against the contract server: what they refuse and what they print.

A whole pull (bundle, branch, apply) runs against the real gateway and a real job
in tests/integration/execution/test_pull_results.py.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from ckrv.cli.render import format_time
from tests.unit.cli.bodies import JOB_ID, error_body, job_body
from tests.unit.cli.conftest import CliRunner
from tests.unit.cli.contract_server import ContractServer, Reply
from tests.unit.cli.git_repos import Clone

JOB = f"/jobs/{JOB_ID}"
PATCH = (
    "diff --git a/LIMITS.md b/LIMITS.md\n"
    "new file mode 100644\n"
    "index 0000000..d5b1f4c\n"
    "--- /dev/null\n"
    "+++ b/LIMITS.md\n"
    "@@ -0,0 +1,2 @@\n"
    "+rate limiter\n"
    "+café\n"
)
SUCCEEDED = job_body(status="succeeded", phase=None, attempt=1, completed_at="2025-03-01T10:05:00Z")


def test_pull_outside_a_repository_says_so_before_asking_the_service(
    ckrv: CliRunner, api: ContractServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    result = ckrv("pull", JOB_ID)

    assert result.exit_code == 1
    assert "Error: not inside a git repository" in result.stderr
    assert "ckrv diff JOB_ID > FILE" in result.stderr
    assert api.received == []


def test_pull_of_a_failed_job_has_no_successful_output(
    ckrv: CliRunner, api: ContractServer, clone: Clone, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(clone.work)
    failed = job_body(status="failed", phase=None, error_message="the agent gave up")
    api.reply("GET", JOB, Reply(200, failed))

    result = ckrv("pull", JOB_ID)

    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"Error: no successful output: job {JOB_ID} failed: the agent gave up",
        f"See what happened: ckrv logs {JOB_ID}",
    ]
    assert api.requests_to("GET", f"{JOB}/artifacts") == []


@pytest.mark.parametrize(
    ("status", "ended"), [("timeout", "timed out"), ("cancelled", "was cancelled")]
)
def test_pull_of_a_job_that_did_not_succeed_names_its_end(
    ckrv: CliRunner,
    api: ContractServer,
    clone: Clone,
    monkeypatch: pytest.MonkeyPatch,
    *,
    status: str,
    ended: str,
) -> None:
    monkeypatch.chdir(clone.work)
    api.reply("GET", JOB, Reply(200, job_body(status=status, phase=None)))

    result = ckrv("pull", "--json", JOB_ID)

    assert result.exit_code == 1
    assert json.loads(result.stderr)["error"] == "no_successful_output"
    assert f"job {JOB_ID} {ended}" in json.loads(result.stderr)["message"]
    assert result.stdout == ""


def test_pull_of_an_unfinished_job_says_to_wait(
    ckrv: CliRunner, api: ContractServer, clone: Clone, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(clone.work)
    api.reply("GET", JOB, Reply(200, job_body(status="running", phase="executing")))

    result = ckrv("pull", JOB_ID)

    assert result.exit_code == 1
    assert f"job {JOB_ID} is running (executing): there is no result to pull yet" in (result.stderr)
    assert f"ckrv logs -f {JOB_ID}" in result.stderr


def test_pull_of_expired_results_names_when_they_expired(
    ckrv: CliRunner, api: ContractServer, clone: Clone, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(clone.work)
    expired_at = "2025-03-08T10:05:00+00:00"
    api.reply("GET", JOB, Reply(200, SUCCEEDED))
    api.reply(
        "GET",
        f"{JOB}/artifacts",
        Reply(410, error_body("gone", "the results expired", expired_at=expired_at)),
    )

    result = ckrv("pull", JOB_ID)

    assert result.exit_code == 1
    when = format_time(datetime.fromisoformat(expired_at))
    assert f"Error: the results of job {JOB_ID} expired on {when}" in result.stderr
    assert "kept for 7 days" in result.stderr


def test_apply_refuses_a_tree_with_uncommitted_changes_unless_forced(
    ckrv: CliRunner, api: ContractServer, clone: Clone, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(clone.work)
    (clone.work / "README.md").write_text("my own edit\n")

    refused = ckrv("pull", "--apply", JOB_ID)

    assert refused.exit_code == 1
    assert "your working tree has uncommitted changes" in refused.stderr
    assert "--force" in refused.stderr
    assert api.received == []
    assert (clone.work / "README.md").read_text() == "my own edit\n"

    # Forced, the command goes on to the service (and stops there: the job failed).
    api.reply("GET", JOB, Reply(200, job_body(status="failed", phase=None)))
    forced = ckrv("pull", "--apply", "--force", JOB_ID)
    assert "no successful output" in forced.stderr
    assert len(api.requests_to("GET", JOB)) == 1


def test_force_alone_is_refused(
    ckrv: CliRunner, api: ContractServer, clone: Clone, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(clone.work)

    result = ckrv("pull", "--force", JOB_ID)

    assert result.exit_code == 1
    assert "--force only goes with --apply" in result.stderr
    assert api.received == []


def test_diff_prints_the_patch_byte_for_byte(ckrv: CliRunner, api: ContractServer) -> None:
    api.reply("GET", f"{JOB}/artifacts/diff", Reply(200, text=PATCH, content_type="text/plain"))

    result = ckrv("diff", JOB_ID)

    assert result.exit_code == 0, result.stderr
    assert result.stdout == PATCH
    (request,) = api.requests_to("GET", f"{JOB}/artifacts/diff")
    assert request.headers["accept"] == "text/plain"


def test_diff_stat_and_json(
    ckrv: CliRunner, api: ContractServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    api.reply("GET", f"{JOB}/artifacts/diff", Reply(200, text=PATCH, content_type="text/plain"))

    stat = ckrv("diff", "--stat", JOB_ID)
    assert stat.exit_code == 0, stat.stderr
    assert stat.stdout.splitlines() == [
        " LIMITS.md |    2 ++",
        " 1 file changed, 2 insertions(+)",
    ]
    numbers = ckrv("diff", "--stat", "--json", JOB_ID)
    assert json.loads(numbers.stdout) == {
        "job_id": JOB_ID,
        "files": [{"path": "LIMITS.md", "insertions": 2, "deletions": 0}],
    }
    whole = ckrv("diff", "--json", JOB_ID)
    assert json.loads(whole.stdout) == {"job_id": JOB_ID, "diff": PATCH}


def test_diff_of_a_job_that_changed_nothing(ckrv: CliRunner, api: ContractServer) -> None:
    api.reply("GET", f"{JOB}/artifacts/diff", Reply(200, text="", content_type="text/plain"))

    assert ckrv("diff", JOB_ID).stdout == ""
    assert ckrv("diff", "--stat", JOB_ID).stdout == "The job changed no files.\n"


def test_diff_of_a_failed_job_explains_and_points_at_the_log(
    ckrv: CliRunner, api: ContractServer
) -> None:
    refusal = error_body(
        "no_successful_output",
        f"job {JOB_ID} failed: the agent gave up; it has no successful output",
        status="failed",
        error_message="the agent gave up",
    )
    api.reply("GET", f"{JOB}/artifacts/diff", Reply(409, refusal))

    result = ckrv("diff", JOB_ID)

    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"Error: job {JOB_ID} failed: the agent gave up; it has no successful output",
        f"See its log: ckrv logs {JOB_ID}",
    ]
    assert result.stdout == ""
