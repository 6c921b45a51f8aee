"""`ckrv jobs`, `ckrv status` and `ckrv cancel` against the contract server."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.unit.cli.bodies import JOB_ID, OTHER_JOB_ID, error_body, job_body
from tests.unit.cli.conftest import CliRunner
from tests.unit.cli.contract_server import ContractServer, Reply


def page(*jobs: dict[str, Any], next_cursor: str | None = None) -> Reply:
    return Reply(200, {"jobs": list(jobs), "next_cursor": next_cursor})


def recent(**overrides: Any) -> dict[str, Any]:
    """A job created a few minutes ago, so the table's age column is predictable."""
    created = (datetime.now(UTC) - timedelta(minutes=5, seconds=30)).isoformat()
    return job_body(created_at=created, **overrides)


# ckrv jobs


def test_jobs_are_listed_as_a_table(ckrv: CliRunner, api: ContractServer) -> None:
    api.reply(
        "GET",
        "/jobs",
        page(
            recent(status="running", phase="executing", elapsed_seconds=65),
            recent(
                id=OTHER_JOB_ID,
                status="succeeded",
                phase=None,
                git_repo_url="git@gitlab.com:team/service.git",
                git_base_branch="develop",
                elapsed_seconds=3720,
            ),
        ),
    )
    result = ckrv("jobs")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        "ID        STATUS     PHASE      REPO                     BRANCH   CREATED  ELAPSED",
        "3f2a1b2c  running    executing  github.com/acme/app      main     5m ago   1m05s",
        "3f2a9999  succeeded  -          gitlab.com:team/service  develop  5m ago   1h02m",
    ]
    (request,) = api.requests_to("GET", "/jobs")
    assert request.query == {"limit": ["20"]}


def test_filters_are_passed_on(ckrv: CliRunner, api: ContractServer) -> None:
    api.reply("GET", "/jobs", page())
    result = ckrv("jobs", "--status", "failed", "--limit", "5")
    assert (result.exit_code, result.stdout) == (0, "No failed jobs.\n")
    (request,) = api.requests_to("GET", "/jobs")
    assert request.query == {"status": ["failed"], "limit": ["5"]}


def test_an_empty_list_suggests_a_first_job(ckrv: CliRunner, api: ContractServer) -> None:
    api.reply("GET", "/jobs", page())
    assert "No jobs yet" in ckrv("jobs").stdout


@pytest.mark.parametrize(
    "args",
    [("--limit", "0"), ("--limit", "101"), ("--limit", "many"), ("--status", "lost")],
)
def test_bad_filters_are_refused_before_anything_is_sent(
    ckrv: CliRunner, api: ContractServer, args: tuple[str, ...]
) -> None:
    result = ckrv("jobs", *args)
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ")
    assert api.received == []


def test_only_the_first_page_without_all(ckrv: CliRunner, api: ContractServer) -> None:
    api.reply("GET", "/jobs", page(recent(), next_cursor="page-2"))
    result = ckrv("jobs", "--limit", "1")
    assert result.exit_code == 0
    assert "more with --all" in result.stdout
    assert len(api.requests_to("GET", "/jobs")) == 1


def test_all_follows_the_cursor_to_the_end(ckrv: CliRunner, api: ContractServer) -> None:
    second = recent(id=OTHER_JOB_ID)
    api.reply("GET", "/jobs", page(recent(), next_cursor="page-2"), page(second))
    result = ckrv("jobs", "--all", "--limit", "1", "--json")
    assert result.exit_code == 0
    listed = json.loads(result.stdout)
    assert [job["id"] for job in listed["jobs"]] == [JOB_ID, OTHER_JOB_ID]
    assert listed["next_cursor"] is None
    queries = [r.query for r in api.requests_to("GET", "/jobs")]
    assert queries == [{"limit": ["1"]}, {"limit": ["1"], "cursor": ["page-2"]}]


def test_json_prints_the_page_as_received(ckrv: CliRunner, api: ContractServer) -> None:
    body = {"jobs": [job_body()], "next_cursor": "page-2"}
    api.reply("GET", "/jobs", Reply(200, body))
    result = ckrv("jobs", "--json")
    assert json.loads(result.stdout) == body


def test_quiet_lists_full_ids(ckrv: CliRunner, api: ContractServer) -> None:
    api.reply("GET", "/jobs", page(recent(), recent(id=OTHER_JOB_ID)))
    assert ckrv("-q", "jobs").stdout == f"{JOB_ID}\n{OTHER_JOB_ID}\n"


def test_verbose_shows_each_request_on_stderr(ckrv: CliRunner, api: ContractServer) -> None:
    api.reply("GET", "/jobs", page())
    result = ckrv("jobs", "-v")
    assert result.stderr.startswith(f"HTTP GET {api.api_url}/jobs?limit=20 -> 200 (")
    assert "HTTP" not in result.stdout


# ckrv status


def test_status_shows_progress(ckrv: CliRunner, api: ContractServer) -> None:
    eta = (datetime.now(UTC) + timedelta(minutes=12)).isoformat()
    api.reply(
        "GET",
        f"/jobs/{JOB_ID}",
        Reply(
            200,
            job_body(
                status="running",
                phase="planning",
                attempt=1,
                elapsed_seconds=95,
                estimated_completion_at=eta,
            ),
        ),
    )
    result = ckrv("status", JOB_ID)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f"Job:            {JOB_ID}" in lines
    assert "Status:         running" in lines
    assert "Phase:          planning" in lines
    assert "Attempt:        1" in lines
    assert "Elapsed:        1m35s" in lines
    assert "Result branch:  ckrv/3f2a1b2c" in lines
    assert any(line.startswith("Estimated end:") and "(in about 1" in line for line in lines)
    assert f"  ckrv logs -f {JOB_ID}" in lines


def test_status_of_a_failed_job_shows_why(ckrv: CliRunner, api: ContractServer) -> None:
    api.reply(
        "GET",
        f"/jobs/{JOB_ID}",
        Reply(
            200,
            job_body(
                status="failed",
                phase=None,
                result_status="failed",
                result_summary="3 of 4 tasks done",
                error_message="verification failed",
            ),
        ),
    )
    lines = ckrv("status", JOB_ID).stdout.splitlines()
    assert "Outcome:        3 of 4 tasks done" in lines
    assert "Error:          verification failed" in lines


def test_status_json_and_quiet(ckrv: CliRunner, api: ContractServer) -> None:
    api.reply("GET", f"/jobs/{JOB_ID}", Reply(200, job_body()))
    assert json.loads(ckrv("status", JOB_ID, "--json").stdout) == job_body()
    assert ckrv("status", "--quiet", JOB_ID).stdout == "pending\n"


def test_status_of_an_unknown_job_exits_1(ckrv: CliRunner, api: ContractServer) -> None:
    api.reply(
        "GET", f"/jobs/{JOB_ID}", Reply(404, error_body("not_found", f"job {JOB_ID} not found"))
    )
    result = ckrv("status", JOB_ID)
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == f"Error: job {JOB_ID} not found\n"


def test_an_id_is_accepted_in_any_case_and_without_dashes(
    ckrv: CliRunner, api: ContractServer
) -> None:
    api.reply("GET", f"/jobs/{JOB_ID}", Reply(200, job_body()))
    assert ckrv("status", JOB_ID.upper()).exit_code == 0
    assert ckrv("status", JOB_ID.replace("-", "")).exit_code == 0
    assert {r.path for r in api.received} == {f"/v1/jobs/{JOB_ID}"}


def test_a_unique_prefix_finds_the_job(ckrv: CliRunner, api: ContractServer) -> None:
    api.reply(
        "GET",
        "/jobs",
        page(recent(id=OTHER_JOB_ID), next_cursor="page-2"),
        page(recent()),
    )
    api.reply("GET", f"/jobs/{JOB_ID}", Reply(200, job_body()))
    result = ckrv("status", "3f2a1b")
    assert result.exit_code == 0, result.stderr
    assert f"Job:            {JOB_ID}" in result.stdout
    assert [r.query.get("cursor") for r in api.requests_to("GET", "/jobs")] == [None, ["page-2"]]


def test_an_ambiguous_prefix_asks_for_more(ckrv: CliRunner, api: ContractServer) -> None:
    api.reply("GET", "/jobs", page(recent(), recent(id=OTHER_JOB_ID)))
    result = ckrv("status", "3f2a")
    assert result.exit_code == 1
    assert "2 jobs have ids starting with 3f2a" in result.stderr
    assert "Give more characters" in result.stderr


def test_a_prefix_of_no_job_is_not_found(ckrv: CliRunner, api: ContractServer) -> None:
    api.reply("GET", "/jobs", page(recent()))
    result = ckrv("status", "abcdef")
    assert result.exit_code == 1
    assert "no job of yours has an id starting with abcdef" in result.stderr


@pytest.mark.parametrize("ref", ["abc", "not-an-id", "../users/me", "3f2a 1b"])
def test_what_is_not_an_id_is_refused_before_anything_is_sent(
    ckrv: CliRunner, api: ContractServer, ref: str
) -> None:
    result = ckrv("status", ref)
    assert result.exit_code == 1
    assert "is not a job id" in result.stderr
    assert api.received == []


# ckrv cancel


def test_cancel_reports_the_request(ckrv: CliRunner, api: ContractServer) -> None:
    api.reply(
        "POST",
        f"/jobs/{JOB_ID}/cancel",
        Reply(202, job_body(status="running", phase="executing", cancel_requested=True)),
    )
    result = ckrv("cancel", JOB_ID)
    assert result.exit_code == 0, result.stderr
    assert (
        f"Cancellation requested for job {JOB_ID} (now running (executing))."
        in result.stdout.splitlines()
    )
    assert len(api.requests_to("POST", f"/jobs/{JOB_ID}/cancel")) == 1


def test_cancel_of_a_job_already_cancelled(ckrv: CliRunner, api: ContractServer) -> None:
    api.reply(
        "POST", f"/jobs/{JOB_ID}/cancel", Reply(202, job_body(status="cancelled", phase=None))
    )
    assert ckrv("cancel", JOB_ID).stdout == f"Job {JOB_ID} is cancelled.\n"


def test_cancel_of_a_finished_job_is_a_conflict(ckrv: CliRunner, api: ContractServer) -> None:
    api.reply(
        "POST",
        f"/jobs/{JOB_ID}/cancel",
        Reply(409, error_body("conflict", "the job cannot be cancelled", status="succeeded")),
    )
    result = ckrv("cancel", JOB_ID)
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr.splitlines() == [
        "Error: the job cannot be cancelled",
        "The job's status is succeeded.",
    ]


def test_cancel_json_and_quiet(ckrv: CliRunner, api: ContractServer) -> None:
    body = job_body(cancel_requested=True)
    api.reply("POST", f"/jobs/{JOB_ID}/cancel", Reply(202, body))
    assert json.loads(ckrv("cancel", "--json", JOB_ID).stdout) == body
    assert ckrv("cancel", "-q", JOB_ID).stdout == ""
