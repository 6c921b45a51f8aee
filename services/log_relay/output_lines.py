"""A workload's output as log entries: bytes cut into lines, each line read and split into entries.

Pure functions of the bytes: from the same offset, the same output always gives the
same lines and the same entries (but for the timestamps of plain-text lines, taken
when read). A relay that resumes after a crash republishes what it had published
under the same `seq`s, and JetStream's duplicate window drops the copies.

A line is what the workload wrote up to a line break, or `max_bytes` of it when it
runs on longer, cut where a UTF-8 character ends. Each line is either one of the
worker's JSON records (`services/worker/joblog.py`: timestamp, level, source,
message, phase, event) or plain text, which becomes an `info` line of the `worker`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ckrv.schemas.logs import MAX_LOG_MESSAGE_CHARACTERS, LogEntry, LogLevel
from ckrv.services.runners.base import OutputChunk

WORKER_SOURCE = "worker"
# UTF-8 continuation bytes are 0b10xxxxxx; a character is at most 4 bytes long.
_CONTINUATION_MASK, _CONTINUATION_BITS = 0b1100_0000, 0b1000_0000
_MAX_CHARACTER_BYTES = 4
# The worker's levels, and the names other programs print, in the entry's words.
_LEVELS = {
    "debug": LogLevel.DEBUG,
    "trace": LogLevel.DEBUG,
    "info": LogLevel.INFO,
    "warn": LogLevel.WARN,
    "warning": LogLevel.WARN,
    "error": LogLevel.ERROR,
    "critical": LogLevel.ERROR,
    "fatal": LogLevel.ERROR,
}


@dataclass(frozen=True)
class OutputLine:
    """One line of output, without its line break."""

    data: bytes
    end: int
    """Where the next line starts in the whole output: a reader resumes there."""


class LineCutter:
    """Cuts output, fed chunk by chunk from `offset`, into lines of at most `max_bytes`."""

    def __init__(self, offset: int, max_bytes: int) -> None:
        self.offset = offset
        """Where the first byte not yet part of a line is: the position to resume from."""
        self._max_bytes = max_bytes
        self._pending = b""

    def feed(self, chunk: OutputChunk) -> list[OutputLine]:
        """The lines `chunk` completes; a trailing piece waits for the next chunk."""
        expected = self.offset + len(self._pending)
        if chunk.offset != expected:
            raise ValueError(f"chunk starts at {chunk.offset}, not at {expected}")
        self._pending += chunk.data
        lines = []
        while True:
            # A line break within reach ends the line; none, and a full line is cut.
            newline = self._pending.find(b"\n", 0, self._max_bytes + 1)
            if newline >= 0:
                lines.append(self._take(newline, newline + 1))
            elif len(self._pending) > self._max_bytes:
                cut = _character_boundary(self._pending, self._max_bytes)
                lines.append(self._take(cut, cut))
            else:
                return lines

    def finish(self) -> list[OutputLine]:
        """The unfinished last line, once the output has ended."""
        if not self._pending:
            return []
        return [self._take(len(self._pending), len(self._pending))]

    def _take(self, length: int, consumed: int) -> OutputLine:
        data = self._pending[:length].removesuffix(b"\r")
        self._pending = self._pending[consumed:]
        self.offset += consumed
        return OutputLine(data, self.offset)


def _character_boundary(data: bytes, cut: int) -> int:
    """`cut`, moved back to the start of the UTF-8 character it would split, if any."""
    for back in range(_MAX_CHARACTER_BYTES):
        if cut - back <= 0:
            break
        if data[cut - back] & _CONTINUATION_MASK != _CONTINUATION_BITS:
            return cut - back
    return cut


@dataclass(frozen=True)
class LogLine:
    """What one line of output says: its text and who wrote it when, and a phase it began."""

    timestamp: datetime
    level: LogLevel
    source: str
    message: str
    phase: str | None = None
    entered_phase: str | None = None
    """The phase this line marks the start of (the worker's `event: "phase"`)."""


def read_line(data: bytes, now: datetime) -> LogLine:
    """The worker's JSON record in `data`, or `data` as a plain-text line of the worker."""
    text = data.decode("utf-8", errors="replace")
    record = _worker_record(text)
    if record is None:
        return LogLine(timestamp=now, level=LogLevel.INFO, source=WORKER_SOURCE, message=text)
    phase = _text(record.get("phase"))
    return LogLine(
        timestamp=_timestamp(record.get("timestamp")) or now,
        level=_LEVELS.get(str(record.get("level", "")).lower(), LogLevel.INFO),
        source=_text(record.get("source")) or WORKER_SOURCE,
        message=record["message"],
        phase=phase,
        entered_phase=phase if record.get("event") == "phase" else None,
    )


def _worker_record(text: str) -> dict[str, Any] | None:
    if not text.startswith("{"):
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None
    if isinstance(record, dict) and isinstance(record.get("message"), str):
        return record
    return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _timestamp(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def log_entries(
    line: LogLine, *, attempt: int, first_seq: int, redact: Callable[[str], str]
) -> list[LogEntry]:
    """The entries of `line`, its message redacted, then split to fit, numbered from `first_seq`."""
    message = redact(line.message)
    pieces = [
        message[start : start + MAX_LOG_MESSAGE_CHARACTERS]
        for start in range(0, len(message), MAX_LOG_MESSAGE_CHARACTERS)
    ] or [""]
    return [
        LogEntry(
            timestamp=line.timestamp,
            level=line.level,
            source=line.source,
            message=piece,
            phase=line.phase,
            attempt=attempt,
            seq=first_seq + index,
        )
        for index, piece in enumerate(pieces)
    ]
