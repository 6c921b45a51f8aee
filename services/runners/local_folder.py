"""One local workload's folder: its layout, its status record, the lock that shows it is watched.

```
<root>/<name>/
  request.json     what was asked (without the input files' contents)
  launch.json      how the supervisor runs it: argv (sandbox included), environment, limits
  status.json      state, pids, times, exit code, reason; replaced whole on every change
  stop.json        a stop request and its grace period, written by `stop`
  supervisor.lock  held (flock) by the supervisor for as long as it lives
  supervisor.log   the supervisor's own errors
  output.log       the workload's stdout and stderr
  input/           the secret input files (0700, files 0600), removed when the command ends
                   or its job does, whichever is first
  workspace/       the command's working folder and HOME
  tmp/             its TMPDIR when not sandboxed (a sandbox has a private /tmp)
```

Whoever holds the lock may write `status.json`: the supervisor for the workload's
life, then anyone who finds the lock free and needs to record an end (a stop before
the start, a supervisor that vanished). Standard library only: the supervisor
imports this on its way to starting the workload.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ckrv.services.runners.lifecycle import FailureReason, WorkloadState

STOP_SIGNAL = signal.SIGUSR1
"""Tells the supervisor to read `stop.json` and stop the workload."""

# How long the supervisor waits for a lock taken by someone only looking, before concluding
# that another supervisor holds it.
SUPERVISOR_LOCK_PATIENCE_SECONDS = 1.0
_LOCK_RETRY_SECONDS = 0.005


def utc_now() -> datetime:
    return datetime.now(UTC)


def write_json_atomically(path: Path, content: dict[str, Any], mode: int = 0o600) -> None:
    """Replace `path` by `content`; readers see the old or the new file, never a part."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    with os.fdopen(descriptor, "w") as file:
        json.dump(content, file)
    os.replace(partial, path)


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text is not None else None


def _text(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


@dataclass(frozen=True)
class StatusRecord:
    """The content of `status.json`."""

    name: str
    job_id: str
    attempt: int
    state: WorkloadState
    created_at: datetime
    supervisor_pid: int | None = None
    pid: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    exit_code: int | None = None
    reason: FailureReason | None = None
    message: str | None = None

    def finished(
        self,
        state: WorkloadState,
        *,
        exit_code: int | None = None,
        reason: FailureReason | None = None,
        message: str | None = None,
    ) -> StatusRecord:
        return dataclasses.replace(
            self,
            state=state,
            exit_code=exit_code,
            reason=reason,
            message=message,
            finished_at=utc_now(),
        )

    def to_json(self) -> dict[str, Any]:
        content = dataclasses.asdict(self)
        for key in ("created_at", "started_at", "finished_at"):
            content[key] = _text(content[key])
        return content

    @classmethod
    def from_json(cls, content: dict[str, Any]) -> StatusRecord:
        reason = content.get("reason")
        return cls(
            **{
                **content,
                "state": WorkloadState(content["state"]),
                "reason": FailureReason(reason) if reason is not None else None,
                "created_at": datetime.fromisoformat(content["created_at"]),
                "started_at": _time(content.get("started_at")),
                "finished_at": _time(content.get("finished_at")),
            }
        )


@dataclass(frozen=True)
class LaunchPlan:
    """The content of `launch.json`: all the supervisor needs to run the command."""

    argv: list[str]
    """What to execute: the command, or bubblewrap wrapping it."""
    program: str
    """The command's program, checked before starting so a missing one is a start error."""
    env: dict[str, str]
    cwd: str
    time_limit_seconds: float
    grace_seconds: float
    memory_limit_bytes: int | None = None
    sandboxed: bool = False
    """Whether `argv` starts with bubblewrap, whose own processes are not the workload's."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, content: dict[str, Any]) -> LaunchPlan:
        return cls(**content)


class WorkloadFolder:
    """Paths and records of one workload's folder; each call reads or writes the disk anew."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.request_path = path / "request.json"
        self.launch_path = path / "launch.json"
        self.status_path = path / "status.json"
        self.stop_path = path / "stop.json"
        self.lock_path = path / "supervisor.lock"
        self.supervisor_log_path = path / "supervisor.log"
        self.output_path = path / "output.log"
        self.input_dir = path / "input"
        self.workspace_dir = path / "workspace"
        self.tmp_dir = path / "tmp"

    @property
    def name(self) -> str:
        return self.path.name

    def read_status(self) -> StatusRecord:
        """The current record; FileNotFoundError when the workload is gone."""
        return StatusRecord.from_json(json.loads(self.status_path.read_bytes()))

    def write_status(self, record: StatusRecord) -> None:
        write_json_atomically(self.status_path, record.to_json())

    def read_launch_plan(self) -> LaunchPlan:
        return LaunchPlan.from_json(json.loads(self.launch_path.read_bytes()))

    def remove_input(self) -> None:
        """Remove the secret input files; nothing to do if they are gone already."""
        shutil.rmtree(self.input_dir, ignore_errors=True)

    def request_stop(self, grace_seconds: float) -> None:
        write_json_atomically(self.stop_path, {"grace_seconds": grace_seconds})

    def stop_grace(self) -> float | None:
        """The grace period of a stop someone asked for; None when nobody did."""
        try:
            return float(json.loads(self.stop_path.read_bytes())["grace_seconds"])
        except FileNotFoundError:
            return None

    @contextlib.contextmanager
    def lock_if_free(self) -> Iterator[bool]:
        """Hold the lock for the block if nobody does (yields True), else yield False at once."""
        try:
            descriptor = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:  # the folder itself is gone
            yield False
            return
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
            else:
                yield True
        finally:
            os.close(descriptor)

    def take_lock_for_life(self) -> bool:
        """Take the lock until this process ends; False if another supervisor holds it.

        Others take the lock only for a moment to look, so a lock that stays taken for
        `SUPERVISOR_LOCK_PATIENCE_SECONDS` belongs to a supervisor.
        """
        descriptor = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        give_up_at = time.monotonic() + SUPERVISOR_LOCK_PATIENCE_SECONDS
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                if error.errno != errno.EWOULDBLOCK or time.monotonic() > give_up_at:
                    os.close(descriptor)
                    return False
                time.sleep(_LOCK_RETRY_SECONDS)
            else:
                # Deliberately never closed: the lock lives exactly as long as this process.
                return True
