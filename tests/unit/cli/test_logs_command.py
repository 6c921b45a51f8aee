"""`ckrv logs` and `ckrv run --cloud --follow` against the contract server.

The contract server answers the event stream as a whole body per request, so a
stream that ends without `data: [DONE]` is what a connection cut mid-stream
looks like to the CLI, and a dropped request is a network failure.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ckrv.cli import log_follow
from ckrv.cli.commands.logs import format_line
from ckrv.cli.models import LogLine
from tests.unit.cli.bodies import JOB_ID, error_body, job_body
from tests.unit.cli.conftest import CliRunner
from tests.unit.cli.contract_server import ContractServer, Reply

LOGS = f"/jobs/{JOB_ID}/logs"


def line(seq: int, *, level: str = "info", message: str | None = None) -> dict[str, Any]:
    return {
        "timestamp": f"2025-03-01T10:00:{seq:02d}Z",
        "level": level,
        "source": "worker",
        "message": message or f"line {seq}",
        "phase": "executing",
        "attempt": 1,
        "seq": seq,
        "id": 100 + seq,
    }


def page(*lines: dict[str, Any], next_after: int | None) -> Reply:
    return Reply(200, {"logs": list(lines), "next": next_after})


def events(*seqs: int, end: str | None = None, reset: bool = False) -> Reply:
    """An event stream with these lines; it ends with the job when `end` is its status."""
    text = "retry: 500\n"
    if reset:
        text += 'event: reset\ndata: {"message": "starts again"}\n\n'
    for seq in seqs:
        body = {key: value for key, value in line(seq).items() if key != "id"}
        text += f"id: {100 + seq}\ndata: {json.dumps(body)}\n\n: heartbeat\n\n"
    if end is not None:
        text += f'event: end\ndata: {{"status": "{end}"}}\n\ndata: [DONE]\n\n'
    return Reply(200, text=text, content_type="text/event-stream")


@pytest.fixture(autouse=True)
def instant_reconnects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(log_follow, "RECONNECT_DELAYS_SECONDS", (0.0,))


def test_the_log_is_printed_page_after_page(ckrv: CliRunner, api: ContractServer) -> None:
    api.reply(
        "GET",
        LOGS,
        page(line(1), line(2, level="warn"), next_after=2),
        page(line(3, level="error"), next_after=None),
    )
    result = ckrv("logs", JOB_ID, "--tail", "3", "--no-color")
    assert result.exit_code == 0, result.stderr
    printed = result.stdout.splitlines()
    assert [text.split()[2:] for text in printed] == [
        ["INFO", "worker", "line", "1"],
        ["WARN", "worker", "line", "2"],
        ["ERROR", "worker", "line", "3"],
    ]
    first, second = api.requests_to("GET", LOGS)
    assert first.query == {"tail": ["3"]}
    assert second.query == {"after": ["2"]}
    assert "\033[" not in result.stdout


def test_json_prints_one_object_per_line(ckrv: CliRunner, api: ContractServer) -> None:
    api.reply("GET", LOGS, page(line(1), line(2), next_after=None))
    result = ckrv("logs", JOB_ID, "--json")
    assert result.exit_code == 0, result.stderr
    assert [json.loads(text) for text in result.stdout.splitlines()] == [line(1), line(2)]


def test_following_prints_the_lines_and_ends_with_the_success(
    ckrv: CliRunner, api: ContractServer
) -> None:
    api.reply("GET", LOGS, events(1, 2, end="succeeded"))
    result = ckrv("logs", "-f", JOB_ID, "--tail", "10")
    assert result.exit_code == 0, result.stderr
    assert [text.split()[-1] for text in result.stdout.splitlines()[:2]] == ["1", "2"]
    assert f"Job {JOB_ID} succeeded." in result.stdout
    (request,) = api.requests_to("GET", LOGS)
    assert request.query == {"follow": ["true"], "tail": ["10"]}
    assert request.headers["accept"] == "text/event-stream"
    assert "last-event-id" not in request.headers
    assert result.stderr == ""


def test_a_lost_connection_resumes_after_the_last_line_shown(
    ckrv: CliRunner, api: ContractServer
) -> None:
    api.reply(
        "GET",
        LOGS,
        events(1, 2),  # cut before the job's end
        Reply(drop=True),  # the network is gone
        events(3, end="failed"),
    )
    api.reply("GET", f"/jobs/{JOB_ID}", Reply(200, job_body(status="failed", error_message="boom")))
    result = ckrv("logs", "-f", JOB_ID, "--tail", "10")
    assert result.exit_code == 1
    assert [text.split()[-1] for text in result.stdout.splitlines()] == ["1", "2", "3"]
    assert result.stderr.count("connection lost") == 2
    assert "reconnecting" in result.stderr
    assert f"job {JOB_ID} failed: boom" in result.stderr
    first, second, third = api.requests_to("GET", LOGS)
    assert "last-event-id" not in first.headers
    assert second.headers["last-event-id"] == third.headers["last-event-id"] == "102"
    # Resuming replaces the tail: it would start elsewhere.
    assert third.query == {"follow": ["true"]}


@pytest.mark.parametrize("status", ["failed", "timeout", "cancelled"])
def test_a_job_that_did_not_succeed_exits_1(
    ckrv: CliRunner, api: ContractServer, status: str
) -> None:
    api.reply("GET", LOGS, events(1, end=status))
    api.reply("GET", f"/jobs/{JOB_ID}", Reply(200, job_body(status=status)))
    result = ckrv("logs", "-f", JOB_ID, "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["seq"] == 1
    assert json.loads(result.stderr)["error"] == f"job_{status}"


def test_a_refusal_ends_following_at_once(ckrv: CliRunner, api: ContractServer) -> None:
    api.reply("GET", LOGS, Reply(404, error_body("not_found", f"job {JOB_ID} not found")))
    result = ckrv("logs", "-f", JOB_ID)
    assert result.exit_code == 1
    assert f"job {JOB_ID} not found" in result.stderr
    assert len(api.requests_to("GET", LOGS)) == 1


def test_a_reset_is_told_on_stderr(ckrv: CliRunner, api: ContractServer) -> None:
    api.reply("GET", LOGS, events(1, end="succeeded", reset=True))
    result = ckrv("logs", "-f", JOB_ID)
    assert result.exit_code == 0
    assert "no longer kept" in result.stderr


def test_giving_up_after_many_failed_reconnections(
    ckrv: CliRunner, api: ContractServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(log_follow, "MAX_RECONNECTS", 2)
    api.reply("GET", LOGS, Reply(drop=True))
    result = ckrv("logs", "-f", JOB_ID)
    assert result.exit_code == 2
    assert "could not get it back" in result.stderr
    assert len(api.requests_to("GET", LOGS)) == 3


def test_run_follow_submits_and_tails_to_the_outcome(
    ckrv: CliRunner, api: ContractServer, spec_file: Path
) -> None:
    api.reply("POST", "/jobs", Reply(201, job_body()))
    api.reply("GET", LOGS, events(1, end="succeeded"))
    result = ckrv(
        "run",
        "--cloud",
        str(spec_file),
        "--repo",
        "https://github.com/acme/app.git",
        "--base-branch",
        "main",
        "--follow",
    )
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"Submitted job {JOB_ID}; following its log (Ctrl-C stops following)."
    assert lines[1].endswith("worker  line 1")
    assert f"Job {JOB_ID} succeeded." in result.stdout


def test_a_line_shows_time_level_and_source_in_colour() -> None:
    shown = LogLine.from_body(line(7, level="error", message="it broke"))
    assert format_line(shown, colour=False, tz=UTC) == (
        "2025-03-01 10:00:07 ERROR worker  it broke"
    )
    coloured = format_line(shown, colour=True, tz=UTC)
    assert "\033[1;31mERROR" in coloured
    assert coloured.endswith("it broke")
    assert LogLine.from_body(line(1)).timestamp == datetime(2025, 3, 1, 10, 0, 1, tzinfo=UTC)
