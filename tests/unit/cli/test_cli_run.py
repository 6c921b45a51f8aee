"""`ckrv run --cloud`: inputs checked, defaults taken from git, the job submitted once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ckrv.cli.commands.run import read_spec
from ckrv.cli.errors import UsageError
from tests.unit.cli.bodies import JOB_ID, SPEC, error_body, job_body
from tests.unit.cli.conftest import CliRunner
from tests.unit.cli.contract_server import ContractServer, Reply
from tests.unit.cli.git_repos import Clone, git

EXPLICIT = ("--repo", "https://github.com/acme/app.git", "--base-branch", "main")


@pytest.fixture
def accepting(api: ContractServer) -> ContractServer:
    api.reply("POST", "/jobs", Reply(201, job_body()))
    return api


def test_without_cloud_it_explains_and_fails(
    ckrv: CliRunner, api: ContractServer, spec_file: Path
) -> None:
    result = ckrv("run", str(spec_file))
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "Chakravarti Cloud client" in result.stderr
    assert "ckrv run --cloud SPEC" in result.stderr
    assert api.received == []


def test_a_spec_is_required(ckrv: CliRunner, api: ContractServer) -> None:
    result = ckrv("run", "--cloud")
    assert result.exit_code == 1
    assert "Give the path of a spec file" in result.stderr
    assert api.received == []


def test_submits_the_spec_with_the_given_repo_branch_and_credential(
    ckrv: CliRunner, accepting: ContractServer, spec_file: Path
) -> None:
    result = ckrv("run", "--cloud", str(spec_file), *EXPLICIT, "--credential", "github-work")
    assert result.exit_code == 0, result.stderr
    (request,) = accepting.requests_to("POST", "/jobs")
    assert request.body == {
        "spec_content": SPEC,
        "git_repo_url": "https://github.com/acme/app.git",
        "git_base_branch": "main",
        "git_credential_name": "github-work",
    }
    assert f"Submitted job {JOB_ID} (pending (queued))" in result.stdout
    for hint in (f"ckrv status {JOB_ID}", f"ckrv logs -f {JOB_ID}", f"ckrv pull {JOB_ID}"):
        assert hint in result.stdout
    assert result.stderr == ""


def test_each_invocation_has_its_own_idempotency_key(
    ckrv: CliRunner, accepting: ContractServer, spec_file: Path
) -> None:
    for _ in range(2):
        assert ckrv("run", "--cloud", str(spec_file), *EXPLICIT).exit_code == 0
    keys = {r.headers["idempotency-key"] for r in accepting.requests_to("POST", "/jobs")}
    assert len(keys) == 2


def test_a_retried_submission_reuses_its_key(
    ckrv: CliRunner, api: ContractServer, spec_file: Path
) -> None:
    api.reply("POST", "/jobs", Reply(drop=True), Reply(200, job_body()))
    result = ckrv("run", "--cloud", str(spec_file), *EXPLICIT)
    assert result.exit_code == 0, result.stderr
    first, second = api.requests_to("POST", "/jobs")
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"]
    assert first.body == second.body


def test_json_prints_the_job_as_received(
    ckrv: CliRunner, accepting: ContractServer, spec_file: Path
) -> None:
    result = ckrv("run", "--cloud", str(spec_file), *EXPLICIT, "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == job_body()


def test_quiet_prints_only_the_id(
    ckrv: CliRunner, accepting: ContractServer, spec_file: Path
) -> None:
    result = ckrv("run", "-q", "--cloud", str(spec_file), *EXPLICIT)
    assert (result.exit_code, result.stdout) == (0, f"{JOB_ID}\n")


def test_defaults_come_from_the_checkout(
    ckrv: CliRunner,
    accepting: ContractServer,
    clone: Clone,
    spec_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    git(clone.work, "checkout", "-q", "-b", "feature")
    git(clone.work, "push", "-q", "-u", "origin", "feature")
    monkeypatch.chdir(clone.work)
    result = ckrv("run", "--cloud", str(spec_file))
    assert result.exit_code == 0, result.stderr
    (request,) = accepting.requests_to("POST", "/jobs")
    assert request.body["git_repo_url"] == str(clone.remote)
    assert request.body["git_base_branch"] == "feature"
    assert "Warning" not in result.stderr


def test_unpushed_commits_are_warned_about_but_submitted(
    ckrv: CliRunner,
    accepting: ContractServer,
    clone: Clone,
    spec_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clone.commit()
    monkeypatch.chdir(clone.work)
    result = ckrv("run", "--cloud", str(spec_file))
    assert result.exit_code == 0
    assert "Warning: branch 'main' is 1 commit ahead of origin/main" in result.stderr
    assert len(accepting.requests_to("POST", "/jobs")) == 1
    # Warnings stay on stderr: stdout remains the result alone.
    assert "Warning" not in ckrv("run", "--cloud", str(spec_file), "--json").stdout


def test_a_branch_never_pushed_is_warned_about(
    ckrv: CliRunner,
    accepting: ContractServer,
    clone: Clone,
    spec_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    git(clone.work, "checkout", "-q", "-b", "local-only")
    monkeypatch.chdir(clone.work)
    result = ckrv("run", "--cloud", str(spec_file))
    assert result.exit_code == 0
    assert "Warning: branch 'local-only' has no upstream" in result.stderr


def test_another_repository_is_not_judged_by_the_local_branch(
    ckrv: CliRunner,
    accepting: ContractServer,
    clone: Clone,
    spec_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clone.commit()
    monkeypatch.chdir(clone.work)
    result = ckrv("run", "--cloud", str(spec_file), "--repo", "https://github.com/acme/other.git")
    assert result.exit_code == 0
    assert result.stderr == ""
    (request,) = accepting.requests_to("POST", "/jobs")
    assert request.body["git_base_branch"] == "main"


def test_outside_a_checkout_repo_must_be_given(
    ckrv: CliRunner,
    api: ContractServer,
    spec_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    monkeypatch.chdir(elsewhere)
    result = ckrv("run", "--cloud", str(spec_file))
    assert result.exit_code == 1
    assert "Error: no --repo given" in result.stderr
    assert "Pass --repo URL" in result.stderr
    assert api.received == []


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "spec file not found"),
        ("", "spec file is empty"),
        ("   \n", "spec file is empty"),
        ("id: [unclosed\n", "spec file is not valid YAML (line 2, column 1)"),
        ("- just\n- a list\n", "must hold a YAML mapping"),
        (b"id: \xff\xfe\n", "not UTF-8 text"),
    ],
)
def test_an_unusable_spec_is_refused_before_anything_is_sent(
    ckrv: CliRunner,
    api: ContractServer,
    tmp_path: Path,
    content: str | bytes | None,
    problem: str,
) -> None:
    path = tmp_path / "spec.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    result = ckrv("run", "--cloud", str(path), *EXPLICIT)
    assert result.exit_code == 1
    assert problem in result.stderr
    assert api.received == []


def test_a_directory_is_not_a_spec(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is a directory"):
        read_spec(tmp_path)


def test_without_a_token_nothing_is_sent(
    ckrv: CliRunner, api: ContractServer, spec_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CHAKRAVARTI_TOKEN")
    result = ckrv("run", "--cloud", str(spec_file), *EXPLICIT)
    assert result.exit_code == 1
    assert result.stderr.startswith(
        "Error: not logged in: run `ckrv cloud login` or set CKRV_TOKEN\n"
    )
    assert api.received == []


def test_quota_exceeded_says_when_it_resets_and_how_to_upgrade(
    ckrv: CliRunner, api: ContractServer, spec_file: Path
) -> None:
    api.reply(
        "POST",
        "/jobs",
        Reply(
            402,
            error_body(
                "quota_exceeded",
                "the free tier includes 10 jobs a month, all used",
                quota_resets_at="2025-04-01T00:00:00+00:00",
                upgrade_url="https://ckrv.dev/upgrade",
            ),
        ),
    )
    result = ckrv("run", "--cloud", str(spec_file), *EXPLICIT)
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert lines[0] == "Error: the free tier includes 10 jobs a month, all used"
    assert lines[1].startswith("Your quota resets at 2025-0")
    assert lines[2] == "For more jobs, upgrade your plan: https://ckrv.dev/upgrade"
    assert result.stdout == ""


def test_validation_errors_list_each_field(
    ckrv: CliRunner, api: ContractServer, spec_file: Path
) -> None:
    api.reply(
        "POST",
        "/jobs",
        Reply(
            422,
            error_body(
                "validation_error",
                "git_repo_url: http repository URLs are refused",
                details=[
                    {"field": "git_repo_url", "message": "http repository URLs are refused"},
                    {"field": "spec_content", "message": "spec needs an `id`"},
                ],
            ),
        ),
    )
    result = ckrv("run", "--cloud", str(spec_file), *EXPLICIT)
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "Error: git_repo_url: http repository URLs are refused",
        "  git_repo_url: http repository URLs are refused",
        "  spec_content: spec needs an `id`",
    ]


def test_concurrency_limited_suggests_waiting_or_cancelling(
    ckrv: CliRunner, api: ContractServer, spec_file: Path
) -> None:
    api.reply("POST", "/jobs", Reply(429, error_body("concurrency_limited", "10 jobs unfinished")))
    result = ckrv("run", "--cloud", str(spec_file), *EXPLICIT)
    assert result.exit_code == 1
    assert "ckrv jobs --status running" in result.stderr


def test_a_server_error_exits_2(ckrv: CliRunner, api: ContractServer, spec_file: Path) -> None:
    api.reply("POST", "/jobs", Reply(500, error_body("internal_error", "the service failed")))
    result = ckrv("run", "--cloud", str(spec_file), *EXPLICIT)
    assert (result.exit_code, result.stderr) == (2, "Error: the service failed\n")


def test_errors_under_json_are_a_json_object_on_stderr(
    ckrv: CliRunner, api: ContractServer, spec_file: Path
) -> None:
    api.reply(
        "POST",
        "/jobs",
        Reply(409, error_body("idempotency_conflict", "key reused", job_id=JOB_ID)),
    )
    result = ckrv("--json", "run", "--cloud", str(spec_file), *EXPLICIT)
    assert result.exit_code == 1
    assert result.stdout == ""
    error = json.loads(result.stderr)
    assert error["error"] == "idempotency_conflict"
    assert error["message"] == "key reused"
    assert error["job_id"] == JOB_ID
    assert error["http_status"] == 409
    assert "new idempotency key" in error["hint"]
