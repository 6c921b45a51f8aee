"""Output bytes to log entries: lines cut the same whichever way the bytes arrive, read, split."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from ckrv.schemas.logs import MAX_LOG_MESSAGE_CHARACTERS, LogLevel
from ckrv.services.log_relay.output_lines import (
    LineCutter,
    LogLine,
    OutputLine,
    log_entries,
    read_line,
)
from ckrv.services.runners.base import OutputChunk

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def cut(output: bytes, *, chunk_size: int, max_bytes: int = 1024, offset: int = 0) -> list[bytes]:
    cutter = LineCutter(offset, max_bytes)
    lines: list[OutputLine] = []
    for start in range(offset, len(output), chunk_size):
        lines += cutter.feed(OutputChunk(start, output[start : start + chunk_size]))
    lines += cutter.finish()
    assert cutter.offset == len(output)
    return [line.data for line in lines]


def test_lines_end_at_line_breaks_and_tell_where_the_next_one_starts() -> None:
    cutter = LineCutter(0, 1024)

    lines = cutter.feed(OutputChunk(0, b"first\r\nsecond\n\nthird, unfin"))

    assert lines == [OutputLine(b"first", 7), OutputLine(b"second", 14), OutputLine(b"", 15)]
    assert cutter.offset == 15
    assert cutter.feed(OutputChunk(27, b"ished\n")) == [OutputLine(b"third, unfinished", 33)]
    assert cutter.finish() == []


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7, 64, 10_000])
def test_the_same_lines_come_whatever_the_chunks(chunk_size: int) -> None:
    output = b"".join(f"line {n} {'x' * (n * 37 % 300)}\n".encode() for n in range(60)) + b"tail"

    assert cut(output, chunk_size=chunk_size, max_bytes=128) == cut(
        output, chunk_size=len(output), max_bytes=128
    )


def test_resuming_at_a_line_s_end_gives_the_lines_that_follow() -> None:
    output = b"one\n" + b"y" * 300 + b"\nthree\n"
    whole = LineCutter(0, 128).feed(OutputChunk(0, output))

    resumed = cut(output, chunk_size=5, max_bytes=128, offset=whole[1].end)

    assert resumed == [line.data for line in whole[2:]]


def test_a_line_longer_than_the_limit_is_cut_not_dropped() -> None:
    lines = cut(b"a" * 2500 + b"\nb\n", chunk_size=1000, max_bytes=1024)

    assert lines == [b"a" * 1024, b"a" * 1024, b"a" * 452, b"b"]


def test_a_cut_never_splits_a_character() -> None:
    text = "é" * 1000  # two bytes each
    lines = cut(b"x" + text.encode(), chunk_size=300, max_bytes=1024)

    assert all(len(line) <= 1024 for line in lines)
    assert "".join(line.decode() for line in lines) == "x" + text


def test_a_chunk_that_does_not_follow_on_is_refused() -> None:
    cutter = LineCutter(0, 1024)
    cutter.feed(OutputChunk(0, b"abc"))

    with pytest.raises(ValueError, match="not at 3"):
        cutter.feed(OutputChunk(10, b"def"))


def worker_line(**fields: object) -> bytes:
    record = {
        "timestamp": "2026-11-27T11:59:58.250Z",
        "level": "info",
        "source": "worker",
        "message": "Cloning",
    } | fields
    return json.dumps(record).encode()


def test_a_worker_line_keeps_its_time_source_and_phase_and_says_warn() -> None:
    line = read_line(
        worker_line(level="warning", source="agent:claude", message="hm", phase="executing"), NOW
    )

    assert line == LogLine(
        timestamp=datetime(2026, 11, 27, 11, 59, 58, 250_000, tzinfo=UTC),
        level=LogLevel.WARN,
        source="agent:claude",
        message="hm",
        phase="executing",
    )


def test_a_phase_marker_names_the_phase_it_begins() -> None:
    assert read_line(worker_line(event="phase", phase="cloning"), NOW).entered_phase == "cloning"
    assert read_line(worker_line(event="started"), NOW).entered_phase is None


@pytest.mark.parametrize(
    "data",
    [
        b"plain text",
        b'{"no": "message"}',
        b"[1, 2, 3]",
        b'{"message": "cut short',
        b"",
    ],
)
def test_anything_else_is_a_plain_line_of_the_worker_read_now(data: bytes) -> None:
    assert read_line(data, NOW) == LogLine(
        timestamp=NOW, level=LogLevel.INFO, source="worker", message=data.decode()
    )


def test_bytes_that_are_not_utf8_are_replaced_not_refused() -> None:
    assert read_line(b"caf\xe9", NOW).message == "caf\ufffd"


def test_a_worker_line_with_odd_fields_gets_sensible_ones() -> None:
    line = read_line(worker_line(timestamp="yesterday", level="loud", source=""), NOW)

    assert (line.timestamp, line.level, line.source) == (NOW, LogLevel.INFO, "worker")


def test_a_long_message_becomes_consecutive_entries_that_join_back() -> None:
    message = "".join(f"{n:08d}" for n in range(12_500))  # 100,000 characters
    line = LogLine(NOW, LogLevel.INFO, "agent:codex", message, phase="executing")

    entries = log_entries(line, attempt=2, first_seq=41, redact=str)

    assert len(entries) == -(-len(message) // MAX_LOG_MESSAGE_CHARACTERS)
    assert [entry.seq for entry in entries] == list(range(41, 41 + len(entries)))
    assert "".join(entry.message for entry in entries) == message
    assert {(entry.source, entry.phase, entry.attempt) for entry in entries} == {
        ("agent:codex", "executing", 2)
    }


def test_the_message_is_redacted_before_it_is_split() -> None:
    secret = "s3cr3t-value"
    message = "x" * (MAX_LOG_MESSAGE_CHARACTERS - 5) + secret
    line = LogLine(NOW, LogLevel.INFO, "worker", message)

    entries = log_entries(
        line, attempt=1, first_seq=1, redact=lambda text: text.replace(secret, "*")
    )

    assert "".join(entry.message for entry in entries) == message.replace(secret, "*")


def test_an_empty_line_is_one_empty_entry() -> None:
    entries = log_entries(
        LogLine(NOW, LogLevel.INFO, "worker", ""), attempt=1, first_seq=7, redact=str
    )

    assert [(entry.seq, entry.message) for entry in entries] == [(7, "")]
