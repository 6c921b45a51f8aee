"""`python -m ckrv.cli.app` as a separate process: base-install imports, Ctrl-C, closed pipes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.cli.bodies import JOB_ID, TOKEN, USER_CODE, job_body, oauth_error
from tests.unit.cli.contract_server import ContractServer, Reply, RunningContractServer

CLI = [sys.executable, "-m", "ckrv.cli.app"]


@pytest.fixture
def server() -> Iterator[ContractServer]:
    running = RunningContractServer()
    yield running.server
    running.stop()


def cli_env(server: ContractServer, config_home: Path | None = None) -> dict[str, str]:
    """The CLI's environment: the contract server, an API token, and no stored login."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("CHAKRAVARTI", "CKRV_"))
    }
    return env | {
        "CHAKRAVARTI_API_URL": server.api_url,
        "CHAKRAVARTI_TOKEN": TOKEN,
        "XDG_CONFIG_HOME": str(config_home or "/nonexistent/ckrv-tests"),
        "CKRV_CREDENTIAL_STORE": "file",
    }


def test_the_cli_imports_nothing_of_the_server_extras() -> None:
    probe = (
        "import sys, ckrv.cli.app\n"
        "server = ('ckrv.services', 'ckrv.events', 'fastapi', 'starlette', 'uvicorn',"
        " 'sqlalchemy', 'sqlmodel', 'nats', 'asyncpg', 'minio')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in server"
        " or m.startswith(server)))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert completed.stdout.strip() == "[]"


def test_the_module_runs_the_cli(server: ContractServer) -> None:
    server.reply("GET", f"/jobs/{JOB_ID}", Reply(200, job_body()))
    completed = subprocess.run(
        [*CLI, "status", "-q", JOB_ID],
        capture_output=True,
        text=True,
        env=cli_env(server),
        check=False,
        timeout=60,
    )
    assert (completed.returncode, completed.stdout, completed.stderr) == (0, "pending\n", "")


def test_a_server_error_ends_without_a_traceback(server: ContractServer) -> None:
    server.reply("GET", "/jobs", Reply(500, text="boom", content_type="text/plain"))
    completed = subprocess.run(
        [*CLI, "jobs"], capture_output=True, text=True, env=cli_env(server), check=False, timeout=60
    )
    assert completed.returncode == 2
    assert completed.stderr.startswith("Error: GET ")
    assert "Traceback" not in completed.stderr


def test_ctrl_c_exits_130_without_a_traceback(server: ContractServer) -> None:
    server.reply("GET", f"/jobs/{JOB_ID}", Reply(200, job_body(), delay=10))
    process = subprocess.Popen(
        [*CLI, "status", JOB_ID],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(server),
    )
    deadline = time.monotonic() + 30
    while not server.received and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.received, "the CLI never sent its request"
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 130
    assert stderr == "Error: interrupted\n"
    assert stdout == ""


def test_ctrl_c_while_waiting_for_approval_exits_130_and_stores_nothing(
    server: ContractServer, tmp_path: Path
) -> None:
    server.device_flow(
        Reply(400, oauth_error("authorization_pending")), interval=0.05, expires_in=60
    )
    env = cli_env(server, tmp_path)
    process = subprocess.Popen(
        [*CLI, "cloud", "login", "--no-browser"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 30
    while len(server.requests_to("POST", "/auth/token")) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.requests_to("POST", "/auth/token"), "the CLI never polled"
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 130
    assert USER_CODE in stdout
    assert stderr.endswith("Error: interrupted\n")
    assert "Traceback" not in stderr
    assert list(tmp_path.rglob("*")) == []


def test_a_closed_stdout_ends_quietly(server: ContractServer) -> None:
    server.reply("GET", "/jobs", Reply(200, {"jobs": [job_body()] * 50, "next_cursor": None}))
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        completed = subprocess.run(
            [*CLI, "jobs", "-q"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(server),
            check=False,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert completed.returncode == 141
    assert completed.stderr == ""
