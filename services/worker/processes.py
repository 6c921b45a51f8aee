"""The worker's child processes: each leads a process group of its own, bounded by a deadline.

Every command (git, an agent, a line of a spec's script) starts in a new session, so stopping
it stops everything it started: when the job's time runs out, when SIGTERM arrives, and when
it exits, since whatever it left running in the background would otherwise keep the job (and
its output pipe) open.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ckrv.services.worker.outcome import TimeLimitExceeded

# How long a stopped command may take to leave after SIGTERM before its group is killed.
STOP_GRACE_SECONDS = 3.0
_READ_SIZE = 65536
# A "line" this long without a newline is handed on as it is rather than held without bound.
MAX_LINE_CHARACTERS = 1024 * 1024


class Deadline:
    """The moment the job's time limit runs out."""

    def __init__(self, limit_seconds: int) -> None:
        self.limit_seconds = limit_seconds
        self._at = time.monotonic() + limit_seconds

    def remaining(self) -> float:
        """Seconds left; `TimeLimitExceeded` once there are none."""
        left = self._at - time.monotonic()
        if left <= 0:
            raise TimeLimitExceeded(self.limit_seconds)
        return left


def _signal_group(group: int, signal_number: signal.Signals) -> None:
    # The group is gone once its last member has exited: nothing left to stop.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal_number)


def stop_group(process: subprocess.Popen[bytes], grace_seconds: float = STOP_GRACE_SECONDS) -> None:
    """Stop `process` and everything in its group: SIGTERM, a grace period, then SIGKILL."""
    if process.poll() is None:
        _signal_group(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(grace_seconds)
    _signal_group(process.pid, signal.SIGKILL)
    process.wait()


@contextmanager
def process_group(argv: Sequence[str], **popen: Any) -> Iterator[subprocess.Popen[bytes]]:
    """Start `argv` as the leader of a new process group; on leaving, none of it still runs."""
    with subprocess.Popen(argv, start_new_session=True, **popen) as process:
        try:
            yield process
        finally:
            stop_group(process)


@dataclass(frozen=True)
class Completed:
    returncode: int
    stdout: str
    stderr: str


def run_captured(
    argv: Sequence[str], *, cwd: Path, env: dict[str, str], deadline: Deadline
) -> Completed:
    """Run `argv` to its end and return what it printed; `TimeLimitExceeded` at the deadline."""
    with process_group(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=deadline.remaining())
        except subprocess.TimeoutExpired:
            raise TimeLimitExceeded(deadline.limit_seconds) from None
    return Completed(
        process.returncode, stdout.decode(errors="replace"), stderr.decode(errors="replace")
    )


class _LineSplitter:
    """Turns a byte stream into text lines (without their line ends) for a callback."""

    def __init__(self, on_line: Callable[[str], None]) -> None:
        self._on_line = on_line
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""

    def feed(self, chunk: bytes) -> None:
        self._pending += self._decoder.decode(chunk)
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._on_line(line.removesuffix("\r"))
        if len(self._pending) > MAX_LINE_CHARACTERS:
            self._on_line(self._pending)
            self._pending = ""

    def close(self) -> None:
        self._pending += self._decoder.decode(b"", final=True)
        if self._pending:
            self._on_line(self._pending.removesuffix("\r"))
            self._pending = ""


def _pump_output(
    process: subprocess.Popen[bytes], deadline: Deadline, lines: _LineSplitter
) -> None:
    """Forward the output until the command has exited and its output is closed."""
    assert process.stdout is not None
    output = process.stdout.fileno()
    exited = os.pidfd_open(process.pid)
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(output, selectors.EVENT_READ)
            selector.register(exited, selectors.EVENT_READ)
            while selector.get_map():
                for key, _ in selector.select(deadline.remaining()):
                    if key.fd == exited:
                        process.wait()
                        # Its background leftovers would hold the output open; stop them now.
                        _signal_group(process.pid, signal.SIGKILL)
                        selector.unregister(exited)
                    elif chunk := os.read(output, _READ_SIZE):
                        lines.feed(chunk)
                    else:
                        selector.unregister(output)
    finally:
        os.close(exited)
    lines.close()


def run_streamed(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: dict[str, str],
    deadline: Deadline,
    on_line: Callable[[str], None],
    stdin_path: Path | None = None,
) -> int:
    """Run `argv`, handing each line it prints (stdout and stderr together) to `on_line`.

    Returns its exit status; `TimeLimitExceeded` at the deadline, with its group stopped.
    """
    with ExitStack() as stack:
        stdin = stack.enter_context(stdin_path.open("rb")) if stdin_path else subprocess.DEVNULL
        process = stack.enter_context(
            process_group(
                argv,
                cwd=cwd,
                env=env,
                stdin=stdin,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        )
        _pump_output(process, deadline, _LineSplitter(on_line))
        return process.returncode
