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
import select
import selectors
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
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


def _leader_exited(process: subprocess.Popen[bytes], timeout: float = 0) -> bool:
    """Whether the group's leader has exited, waiting up to `timeout` seconds, without reaping
    it: until it is reaped, its pid (the group's id) cannot be given to another process."""
    if process.returncode is not None:
        return True
    exited = os.pidfd_open(process.pid)
    try:
        readable, _, _ = select.select([exited], [], [], timeout)
    finally:
        os.close(exited)
    return bool(readable)


def _kill_group_and_reap(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL whatever is left in the group while its id is still ours, then reap the leader."""
    if process.returncode is None:
        _signal_group(process.pid, signal.SIGKILL)
    process.wait()


def stop_group(process: subprocess.Popen[bytes], grace_seconds: float = STOP_GRACE_SECONDS) -> None:
    """Stop `process` and everything in its group: SIGTERM, a grace period, then SIGKILL."""
    if not _leader_exited(process):
        _signal_group(process.pid, signal.SIGTERM)
        _leader_exited(process, grace_seconds)
    _kill_group_and_reap(process)


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
    stdout, stderr = bytearray(), bytearray()
    with process_group(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        _pump_output(
            process,
            deadline,
            {process.stdout.fileno(): stdout.extend, process.stderr.fileno(): stderr.extend},
        )
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
    process: subprocess.Popen[bytes],
    deadline: Deadline,
    sinks: Mapping[int, Callable[[bytes], object]],
) -> None:
    """Hand each output's chunks to its sink until the command has exited and they are closed.

    `TimeLimitExceeded` at the deadline (the caller's `process_group` then stops the group).
    """
    exited = os.pidfd_open(process.pid)
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(exited, selectors.EVENT_READ)
            for output, sink in sinks.items():
                selector.register(output, selectors.EVENT_READ, sink)
            while selector.get_map():
                for key, _ in selector.select(deadline.remaining()):
                    if key.fd == exited:
                        # Its background leftovers would hold the outputs open; stop them now.
                        _kill_group_and_reap(process)
                        selector.unregister(exited)
                    elif chunk := os.read(key.fd, _READ_SIZE):
                        key.data(chunk)
                    else:
                        selector.unregister(key.fd)
    finally:
        os.close(exited)


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
        assert process.stdout is not None
        lines = _LineSplitter(on_line)
        _pump_output(process, deadline, {process.stdout.fileno(): lines.feed})
        lines.close()
        return process.returncode
