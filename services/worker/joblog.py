"""The worker's stdout: structured JSON log lines, one object per line, for the log-relay.

Every line has
- `timestamp`: RFC 3339 in UTC with milliseconds and a `Z` suffix;
- `level`: `info`, `warning` or `error`;
- `source`: `worker`, or `agent:<name>` for a line an agent printed (its text as printed);
- `message`: the text;
- `phase`: the phase the job is in, on every line once the first phase has begun.

Three kinds of line also carry an `event`:
- `started`: the first line, printed before anything heavy is imported;
- `phase`: a phase marker, the job entering `phase` (`cloning`, `planning`, `executing`,
  `verifying`, `uploading`); the log-relay turns each into a `job.phase-changed` event;
- `finished`: the last line, with `exit_code` and `reason` (a machine-readable code such as
  `timeout`, `clone_failed` or `upload_failed`; null on success) and, on success, `summary`.

Nothing else is written to stdout. The git credential is replaced by `[redacted]` wherever it
would appear, agent output included. Only the standard library is imported here, so the first
line goes out within a few tens of milliseconds of the process starting.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

Level = Literal["info", "warning", "error"]
# The workload's phases, in order: the event catalog's `WorkloadPhase` values.
Phase = Literal["cloning", "planning", "executing", "verifying", "uploading"]

REDACTED = "[redacted]"
# An agent may print whole files on one line (stream-json tool results); the log stream
# carries one message per line and is not the place for them.
MAX_MESSAGE_CHARACTERS = 16_384
# The lines of a private key long enough to be worth hiding on their own (not the armour).
_MIN_SECRET_LINE_CHARACTERS = 16


def utc_timestamp() -> str:
    """Now, as RFC 3339 in UTC: `2025-01-31T12:00:00.123Z`."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def secret_fragments(secret: str) -> list[str]:
    """The strings to hide for a secret: all of it, and each long line of a multi-line one."""
    fragments = [secret.strip()]
    for line in secret.splitlines():
        fragment = line.strip()
        if len(fragment) >= _MIN_SECRET_LINE_CHARACTERS and not fragment.startswith("-----"):
            fragments.append(fragment)
    # Longest first, so a whole key is replaced before its lines are.
    return sorted({fragment for fragment in fragments if fragment}, key=len, reverse=True)


class JobLog:
    """Writes the worker's log lines; remembers the current phase and what to redact."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdout
        self._secrets: list[str] = []
        self.phase: Phase | None = None

    def hide(self, secret: str) -> None:
        """From now on, replace `secret` wherever it appears in a line."""
        self._secrets = sorted({*self._secrets, *secret_fragments(secret)}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text

    def write(self, level: Level, message: str, *, source: str = "worker", **fields: Any) -> None:
        message = self.redact(message)
        if len(message) > MAX_MESSAGE_CHARACTERS:
            cut = len(message) - MAX_MESSAGE_CHARACTERS
            message = f"{message[:MAX_MESSAGE_CHARACTERS]} [{cut} more characters cut]"
        entry: dict[str, Any] = {
            "timestamp": utc_timestamp(),
            "level": level,
            "source": source,
            "message": message,
        }
        if self.phase is not None:
            entry["phase"] = self.phase
        for name, value in fields.items():
            entry[name] = self.redact(value) if isinstance(value, str) else value
        self._stream.write(json.dumps(entry, ensure_ascii=False) + "\n")
        # Unbuffered in effect: the relay forwards lines as they come.
        self._stream.flush()

    def info(self, message: str, **fields: Any) -> None:
        self.write("info", message, **fields)

    def warning(self, message: str, **fields: Any) -> None:
        self.write("warning", message, **fields)

    def started(self, message: str) -> None:
        self.write("info", message, event="started")

    def enter_phase(self, phase: Phase, message: str) -> None:
        self.phase = phase
        self.write("info", message, event="phase")

    def agent_output(self, agent: str, line: str) -> None:
        self.write("info", line, source=f"agent:{agent}")

    def finished(self, exit_code: int, reason: str | None, message: str, **fields: Any) -> None:
        level: Level = "info" if exit_code == 0 else "error"
        self.write(level, message, event="finished", exit_code=exit_code, reason=reason, **fields)
