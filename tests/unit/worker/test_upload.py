"""Uploads retry what may pass on a second try, and fail at once on a refusal.

A loopback HTTP server answers with the statuses a test lines up; the real storage is in the
integration tests.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from ckrv.services.stack.ports import free_ports
from ckrv.services.worker.joblog import JobLog
from ckrv.services.worker.outcome import InfrastructureFailure
from ckrv.services.worker.upload import put_file, without_query

S3_REFUSAL = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
    b"<Message>Request has expired</Message><Key>jobs/x/1/diff.patch</Key></Error>"
)


@dataclass
class Answers:
    """The statuses to answer with, in order (the last one repeats), and the bodies received."""

    statuses: list[int] = field(default_factory=list)
    received: list[tuple[str | None, bytes]] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_PUT(self) -> None:
        length = self.headers.get("Content-Length")
        body = self.rfile.read(int(length or 0))
        answers = self.server.answers
        answers.received.append((length, body))
        status = answers.statuses.pop(0) if len(answers.statuses) > 1 else answers.statuses[0]
        payload = S3_REFUSAL if status == 403 else b""
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


class _Server(ThreadingHTTPServer):
    def __init__(self, port: int, answers: Answers) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.answers = answers


@pytest.fixture
def answers() -> Iterator[tuple[str, Answers]]:
    """The server's URL and what it answers."""
    answers = Answers()
    (port,) = free_ports(1)
    server = _Server(port, answers)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
    )
    thread.start()
    yield f"http://127.0.0.1:{port}/bucket/jobs/x/1/diff.patch?X-Amz-Signature=abc", answers
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def patch_file(tmp_path: Path) -> Path:
    path = tmp_path / "diff.patch"
    path.write_bytes(b"diff --git a/x b/x\n")
    return path


def test_a_server_error_is_retried_until_the_upload_passes(
    answers: tuple[str, Answers], patch_file: Path
) -> None:
    url, served = answers
    served.statuses = [503, 500, 200]
    log_stream = io.StringIO()

    with httpx.Client() as client:
        put_file(client, url, patch_file, JobLog(log_stream), first_retry_delay=0.01)

    assert served.received == [("19", patch_file.read_bytes())] * 3
    assert log_stream.getvalue().count("trying again") == 2
    assert "X-Amz-Signature" not in log_stream.getvalue()


def test_a_refusal_fails_at_once_with_the_storages_reason(
    answers: tuple[str, Answers], patch_file: Path
) -> None:
    url, served = answers
    served.statuses = [403]

    with httpx.Client() as client, pytest.raises(InfrastructureFailure) as raised:
        put_file(client, url, patch_file, JobLog(io.StringIO()), first_retry_delay=0.01)

    assert len(served.received) == 1
    assert raised.value.reason == "upload_failed"
    assert raised.value.message == (
        f"{without_query(url)} refused diff.patch: HTTP 403 AccessDenied: Request has expired"
    )


def test_the_attempts_run_out_on_a_storage_that_keeps_failing(
    answers: tuple[str, Answers], patch_file: Path
) -> None:
    url, served = answers
    served.statuses = [502]

    with httpx.Client() as client, pytest.raises(InfrastructureFailure) as raised:
        put_file(client, url, patch_file, JobLog(io.StringIO()), first_retry_delay=0.01)

    assert len(served.received) == 4
    assert "in 4 attempts: HTTP 502" in raised.value.message


def test_an_unreachable_storage_is_retried_then_given_up(patch_file: Path) -> None:
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}/bucket/key"

    with httpx.Client() as client, pytest.raises(InfrastructureFailure) as raised:
        put_file(client, url, patch_file, JobLog(io.StringIO()), attempts=2, first_retry_delay=0.01)

    assert "in 2 attempts: ConnectError" in raised.value.message


def test_a_logged_url_has_no_query() -> None:
    assert without_query("https://s3.example/b/k?X-Amz-Signature=s&X-Amz-Credential=c") == (
        "https://s3.example/b/k"
    )
