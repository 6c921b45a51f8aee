"""A service process (the gateway) serves health, readiness and metrics; SIGTERM stops it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ckrv.services.stack.ports import free_ports

pytestmark = pytest.mark.integration


def wait_for_http(url: str, process: subprocess.Popen[bytes], within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"service exited with {process.returncode}")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {within} s")


@pytest.fixture
def gateway(
    nats_server: Any, postgres_server: Any, tmp_path: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    (port,) = free_ports(1)
    environment = os.environ | {
        "CKRV_ENV": "dev",
        "CKRV_NATS_URL": nats_server.url,
        "CKRV_DATABASE_URL": postgres_server.dsn,
        "CKRV_GATEWAY_HTTP_PORT": str(port),
    }
    log = (tmp_path / "gateway.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "ckrv.services.operator", "serve", "gateway"],
        env=environment,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/healthz", process)
        yield base, process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()


def test_health_readiness_and_metrics(gateway: tuple[str, subprocess.Popen[bytes]]) -> None:
    base, _ = gateway
    assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{base}/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"nats": "ok", "database": "ok"}}
    metrics = httpx.get(f"{base}/metrics")
    assert metrics.status_code == 200
    assert "text/plain" in metrics.headers["content-type"]
    assert "process_cpu_seconds_total" in metrics.text


def test_sigterm_stops_the_service_cleanly(gateway: tuple[str, subprocess.Popen[bytes]]) -> None:
    _, process = gateway
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0
    assert time.monotonic() - started < 10


def test_production_settings_without_connections_exit_with_a_clear_error() -> None:
    environment = {
        name: value for name, value in os.environ.items() if not name.startswith("CKRV_")
    }
    completed = subprocess.run(
        [sys.executable, "-m", "ckrv.services.operator", "serve", "gateway"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 2
    assert "CKRV_NATS_URL" in completed.stderr
    assert "CKRV_ENV=dev" in completed.stderr
    assert "Traceback" not in completed.stderr


def run_gateway(extra_environment: dict[str, str]) -> subprocess.Popen[str]:
    environment = {
        name: value for name, value in os.environ.items() if not name.startswith("CKRV_")
    } | {"CKRV_ENV": "dev"}
    return subprocess.Popen(
        [sys.executable, "-m", "ckrv.services.operator", "serve", "gateway"],
        env=environment | extra_environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_an_unreachable_dependency_ends_the_start_with_a_clear_error() -> None:
    unused_port, http_port = free_ports(2)
    process = run_gateway(
        {
            "CKRV_NATS_URL": f"nats://127.0.0.1:{unused_port}",
            "CKRV_GATEWAY_HTTP_PORT": str(http_port),
            "CKRV_GATEWAY_STARTUP_TIMEOUT_SECONDS": "2",
        }
    )
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 1
    assert "did not start within 2.0 s" in output


def test_sigterm_while_waiting_for_a_dependency_stops_at_once() -> None:
    unused_port, http_port = free_ports(2)
    process = run_gateway(
        {
            "CKRV_NATS_URL": f"nats://127.0.0.1:{unused_port}",
            "CKRV_GATEWAY_HTTP_PORT": str(http_port),
        }
    )
    # Signalled once it is waiting: its first attempt to reach NATS has failed.
    assert process.stdout is not None
    seen = ""
    while "NATS error" not in seen:
        line = process.stdout.readline()
        assert line, f"the gateway ended before trying NATS: {seen}"
        seen += line
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=10)
    output = seen + output
    assert process.returncode == 0, output
    assert time.monotonic() - started < 5
    assert "stopped while starting" in output


def test_a_taken_http_port_is_named_in_the_error(nats_server: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = run_gateway(
            {"CKRV_NATS_URL": nats_server.url, "CKRV_GATEWAY_HTTP_PORT": str(port)}
        )
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in output
