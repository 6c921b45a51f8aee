"""What users read: durations, ages, times, the jobs table and the status view."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from ckrv.cli.models import Job
from ckrv.cli.render import (
    format_age,
    format_duration,
    format_rough_duration,
    format_table,
    format_time,
    job_details,
    jobs_table,
    next_steps,
    short_id,
    short_repo,
    status_text,
)
from tests.unit.cli.bodies import JOB_ID, job_body

NOW = datetime(2025, 3, 1, 10, 30, tzinfo=UTC)


def job(**overrides: object) -> Job:
    return Job.from_body(job_body(**overrides))


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (-1, "-"),
        (0, "0s"),
        (42.9, "42s"),
        (185, "3m05s"),
        (3720, "1h02m"),
        (2 * 86400 + 3 * 3600 + 59, "2d03h"),
    ],
)
def test_durations(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("ago", "text"),
    [
        (timedelta(seconds=10), "just now"),
        (timedelta(minutes=5, seconds=59), "5m ago"),
        (timedelta(hours=3, minutes=1), "3h ago"),
        (timedelta(days=2, hours=5), "2d ago"),
        (timedelta(seconds=-30), "just now"),
    ],
)
def test_ages(ago: timedelta, text: str) -> None:
    assert format_age(NOW - ago, NOW) == text


def test_times_are_shown_in_the_given_zone() -> None:
    assert format_time(NOW, UTC) == "2025-03-01 10:30:00 UTC"
    plus_two = timezone(timedelta(hours=2), "EET")
    assert format_time(NOW, plus_two) == "2025-03-01 12:30:00 EET"


@pytest.mark.parametrize(
    ("url", "short"),
    [
        ("https://github.com/acme/app.git", "github.com/acme/app"),
        ("git@github.com:acme/app.git", "github.com:acme/app"),
        ("ssh://git@gitlab.example.com/team/app", "gitlab.example.com/team/app"),
        ("/srv/git/app.git", "/srv/git/app"),
        (
            "https://github.com/a-very-long-organisation-name/an-even-longer-repository-name",
            "...n-name/an-even-longer-repository-name",
        ),
    ],
)
def test_repositories_are_shortened_for_the_table(url: str, short: str) -> None:
    assert short_repo(url) == short
    assert len(short_repo(url)) <= 40


def test_short_ids_are_the_first_eight_characters() -> None:
    assert short_id(JOB_ID) == "3f2a1b2c"


def test_status_text_shows_the_phase_of_unfinished_jobs_only() -> None:
    assert status_text(job(status="running", phase="executing")) == "running (executing)"
    assert status_text(job(status="pending", phase=None)) == "pending"
    assert status_text(job(status="succeeded", phase="uploading")) == "succeeded"


def test_tables_align_their_columns() -> None:
    table = format_table(("A", "LONGER"), [("xyz", "1"), ("x", "22")])
    assert table.splitlines() == ["A    LONGER", "xyz  1", "x    22"]


def test_jobs_table() -> None:
    jobs = [
        job(
            id="aaaaaaaa-0000-4000-8000-000000000001",
            status="running",
            phase="executing",
            created_at="2025-03-01T10:25:00Z",
            elapsed_seconds=185,
        ),
        job(
            id="bbbbbbbb-0000-4000-8000-000000000002",
            status="succeeded",
            phase=None,
            git_repo_url="git@gitlab.com:team/service.git",
            git_base_branch="develop",
            created_at="2025-02-27T09:00:00Z",
            elapsed_seconds=3720,
        ),
    ]
    assert jobs_table(jobs, NOW).splitlines() == [
        "ID        STATUS     PHASE      REPO                     BRANCH   CREATED  ELAPSED",
        "aaaaaaaa  running    executing  github.com/acme/app      main     5m ago   3m05s",
        "bbbbbbbb  succeeded  -          gitlab.com:team/service  develop  2d ago   1h02m",
    ]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(20, "under a minute"), (600, "10m"), (3900, "1h05m")],
)
def test_rough_durations(seconds: float, text: str) -> None:
    assert format_rough_duration(seconds) == text


def test_details_of_a_running_job() -> None:
    running = job(
        status="running",
        phase="executing",
        attempt=1,
        started_at="2025-03-01T10:01:00Z",
        elapsed_seconds=1740,
        estimated_completion_at="2025-03-01T10:40:00Z",
        cancel_requested=True,
    )
    assert job_details(running, NOW, UTC) == [
        "Job:            3f2a1b2c-4d5e-4f60-8a7b-9c0d1e2f3a4b",
        "Status:         running",
        "Phase:          executing",
        "Attempt:        1",
        "Repository:     https://github.com/acme/app.git",
        "Base branch:    main",
        "Result branch:  ckrv/3f2a1b2c",
        "Spec:           add-login",
        "Created:        2025-03-01 10:00:00 UTC",
        "Started:        2025-03-01 10:01:00 UTC",
        "Elapsed:        29m00s",
        "Estimated end:  2025-03-01 10:40:00 UTC (in about 10m)",
        "Cancellation:   requested",
    ]


def test_details_of_an_overdue_job_say_so() -> None:
    late = job(status="running", estimated_completion_at="2025-03-01T10:00:00Z")
    assert "Estimated end:  2025-03-01 10:00:00 UTC (overdue)" in job_details(late, NOW, UTC)


def test_details_of_a_finished_job_show_its_outcome_not_an_estimate() -> None:
    failed = job(
        status="failed",
        phase=None,
        attempt=2,
        started_at="2025-03-01T10:01:00Z",
        completed_at="2025-03-01T10:11:00Z",
        elapsed_seconds=600,
        estimated_completion_at="2025-03-01T10:40:00Z",
        result_status="failed",
        result_summary="2 of 5 tasks done",
        error_message="verification failed: tests did not pass",
    )
    lines = job_details(failed, NOW, UTC)
    assert "Completed:      2025-03-01 10:11:00 UTC" in lines
    assert "Outcome:        2 of 5 tasks done" in lines
    assert "Error:          verification failed: tests did not pass" in lines
    assert not any(line.startswith(("Estimated", "Cancellation")) for line in lines)


def test_next_steps_follow_the_state() -> None:
    assert next_steps(job(status="running")) == [f"ckrv logs -f {JOB_ID}", f"ckrv status {JOB_ID}"]
    assert next_steps(job(status="succeeded")) == [f"ckrv pull {JOB_ID}", f"ckrv logs {JOB_ID}"]
    assert next_steps(job(status="failed")) == [f"ckrv logs {JOB_ID}"]


def test_times_without_an_offset_are_read_as_utc() -> None:
    naive = job(created_at="2025-03-01T10:25:00", started_at="2025-03-01T10:26:00")
    assert naive.created_at == datetime(2025, 3, 1, 10, 25, tzinfo=UTC)
    assert naive.started_at == datetime(2025, 3, 1, 10, 26, tzinfo=UTC)
    assert format_age(naive.created_at, NOW) == "5m ago"
