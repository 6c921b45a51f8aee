"""The root command: parsing, global flags in either place, help, and usage errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit.cli.bodies import JOB_ID, job_body
from tests.unit.cli.conftest import CliRunner
from tests.unit.cli.contract_server import ContractServer, Reply


def test_help_lists_the_commands(ckrv: CliRunner) -> None:
    for args in ((), ("--help",), ("-h",)):
        result = ckrv(*args)
        assert result.exit_code == 0
        for command in ("run", "jobs", "status", "cancel", "--json", "--quiet", "--verbose"):
            assert command in result.stdout


def test_each_command_has_help_with_the_global_flags(ckrv: CliRunner) -> None:
    for command in ("run", "jobs", "status", "cancel"):
        result = ckrv(command, "--help")
        assert result.exit_code == 0
        assert "--json" in result.stdout
        assert "--quiet" in result.stdout


def test_version(ckrv: CliRunner) -> None:
    result = ckrv("--version")
    assert result.exit_code == 0
    assert result.stdout.strip()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("launch",), 'Unknown command "launch"'),
        (("jobs", "--colour"), "--colour"),
        (("status",), "requires an argument"),
        (("status", JOB_ID, "extra"), "extra"),
        (("run", "--cloud", "a.yaml", "b.yaml"), "b.yaml"),
    ],
)
def test_usage_errors_exit_1_with_a_plain_message(
    ckrv: CliRunner, args: tuple[str, ...], message: str
) -> None:
    result = ckrv(*args)
    assert result.exit_code == 1
    assert result.stdout == ""
    first, hint = result.stderr.splitlines()
    assert first.startswith("Error: ")
    assert message in first
    assert hint == "See `ckrv --help`, or `ckrv COMMAND --help`."


def test_a_usage_error_under_json_is_json(ckrv: CliRunner) -> None:
    result = ckrv("jobs", "--json", "--status", "lost")
    assert result.exit_code == 1
    assert json.loads(result.stderr)["error"] == "usage_error"


@pytest.mark.parametrize(
    "args",
    [
        ("--json", "status", JOB_ID),
        ("status", JOB_ID, "--json"),
        ("status", "--json", JOB_ID),
        ("--verbose", "status", "--json", JOB_ID),
    ],
)
def test_global_flags_work_before_and_after_the_command(
    ckrv: CliRunner, api: ContractServer, args: tuple[str, ...]
) -> None:
    api.reply("GET", f"/jobs/{JOB_ID}", Reply(200, job_body()))
    result = ckrv(*args)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == job_body()
    assert ("HTTP GET" in result.stderr) == ("--verbose" in args)


def test_flags_before_and_after_combine(ckrv: CliRunner, api: ContractServer) -> None:
    api.reply("GET", f"/jobs/{JOB_ID}", Reply(200, job_body()))
    result = ckrv("-v", "status", "-q", JOB_ID)
    assert result.stdout == "pending\n"
    assert "HTTP GET" in result.stderr


def test_a_malformed_setting_is_a_user_error(
    ckrv: CliRunner, api: ContractServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHAKRAVARTI_API_URL", "127.0.0.1:8080/v1")
    result = ckrv("jobs")
    assert result.exit_code == 1
    assert "CHAKRAVARTI_API_URL must be an http(s) URL" in result.stderr
    assert api.received == []


def test_an_unreachable_service_exits_2_naming_the_url(
    ckrv: CliRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CHAKRAVARTI_API_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("CHAKRAVARTI_TOKEN", "token")
    result = ckrv("jobs")
    assert result.exit_code == 2
    assert "could not reach Chakravarti Cloud at http://127.0.0.1:9/v1/jobs" in result.stderr
    assert "ckrv-cloud up" in result.stderr
    assert "Traceback" not in result.stderr
