"""The worker's stdout: one JSON object per line, phase markers, nothing secret."""

from __future__ import annotations

import io
import json
import re
from typing import Any, get_args

from ckrv.events.catalog import WorkloadPhase
from ckrv.services.worker.joblog import (
    MAX_MESSAGE_CHARACTERS,
    REDACTED,
    JobLog,
    Phase,
    secret_fragments,
    utc_timestamp,
)

PRIVATE_KEY = """-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACCDh7Kj0zU4Yx2Rw2GmW1l3c3FQwJ6H5nq0r8m5Y6jH7wAAAJg0cZqWNHGa
-----END OPENSSH PRIVATE KEY-----
"""


def lines_of(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_line_has_timestamp_level_source_and_message() -> None:
    stream = io.StringIO()
    JobLog(stream).info("cloning")

    (line,) = lines_of(stream)
    assert line.keys() == {"timestamp", "level", "source", "message"}
    assert (line["level"], line["source"], line["message"]) == ("info", "worker", "cloning")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["timestamp"])


def test_timestamps_are_utc_with_a_z() -> None:
    assert utc_timestamp().endswith("Z")
    assert "+" not in utc_timestamp()


def test_phase_markers_and_the_lines_after_them_carry_the_phase() -> None:
    stream = io.StringIO()
    log = JobLog(stream)
    log.started("ckrv-worker started")
    log.enter_phase("executing", "running script")
    log.agent_output("script", "hello")
    log.finished(0, None, "script changed 1 file")

    started, marker, agent, finished = lines_of(stream)
    assert started["event"] == "started"
    assert "phase" not in started
    assert (marker["event"], marker["phase"]) == ("phase", "executing")
    assert (agent["source"], agent["phase"], agent["message"]) == (
        "agent:script",
        "executing",
        "hello",
    )
    assert "event" not in agent
    assert finished["event"] == "finished"
    assert (finished["exit_code"], finished["reason"], finished["level"]) == (0, None, "info")


def test_a_failure_ends_with_an_error_line_and_its_reason() -> None:
    stream = io.StringIO()
    JobLog(stream).finished(1, "timeout", "the job ran past its time limit of 3 seconds")

    (line,) = lines_of(stream)
    assert (line["level"], line["exit_code"], line["reason"]) == ("error", 1, "timeout")


def test_the_worker_phases_are_the_catalogs_workload_phases() -> None:
    assert list(get_args(Phase)) == [phase.value for phase in get_args(WorkloadPhase)]


def test_a_hidden_token_is_redacted_in_messages_and_fields() -> None:
    stream = io.StringIO()
    log = JobLog(stream)
    log.hide("ghp_secret123\n")
    log.agent_output("claude", "I found ghp_secret123 in the environment")
    log.finished(1, "agent_failed", "failed", detail="echo ghp_secret123")

    text = stream.getvalue()
    assert "ghp_secret123" not in text
    first, second = lines_of(stream)
    assert first["message"] == f"I found {REDACTED} in the environment"
    assert second["detail"] == f"echo {REDACTED}"


def test_every_line_of_a_hidden_private_key_is_redacted_on_its_own() -> None:
    stream = io.StringIO()
    log = JobLog(stream)
    log.hide(PRIVATE_KEY)
    body = PRIVATE_KEY.splitlines()[2]
    log.agent_output("codex", f"cat: {body}")
    log.info(PRIVATE_KEY)

    assert not any(line in stream.getvalue() for line in PRIVATE_KEY.splitlines()[1:-1])
    assert secret_fragments(PRIVATE_KEY)[0] == PRIVATE_KEY.strip()
    assert "-----END OPENSSH PRIVATE KEY-----" not in secret_fragments(PRIVATE_KEY)


def test_a_huge_line_is_cut() -> None:
    stream = io.StringIO()
    JobLog(stream).agent_output("claude", "x" * (MAX_MESSAGE_CHARACTERS + 10))

    (line,) = lines_of(stream)
    assert line["message"] == "x" * MAX_MESSAGE_CHARACTERS + " [10 more characters cut]"
    assert stream.getvalue().count("\n") == 1


def test_text_that_is_not_ascii_stays_readable() -> None:
    stream = io.StringIO()
    JobLog(stream).agent_output("script", "grüße ✓")

    assert "grüße ✓" in stream.getvalue()
