"""Supervision of the stack's child processes: spawn, wait until ready, stop, never outlive us.

Every child runs in its own session, so a Ctrl-C in the terminal reaches only the
launcher, which then stops the children in order. On Linux each child also gets
SIGKILL from the kernel when the launcher dies, so even a SIGKILLed launcher
leaves no server behind.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from ckrv.services.stack.errors import StackError

DEFAULT_START_TIMEOUT_SECONDS = 60.0
DEFAULT_STOP_TIMEOUT_SECONDS = 5.0
_POLL_SECONDS = 0.05
_READY_PROBE_SECONDS = 0.1
_HTTP_PROBE_SECONDS = 1.0
_LOG_TAIL_LINES = 25
_PR_SET_PDEATHSIG = 1


class StartError(StackError):
    """A child process exited or did not become ready in time."""


@dataclass(frozen=True)
class RunAs:
    """The unprivileged account a child switches to before it executes its program."""

    name: str
    uid: int
    gid: int


def find_executable(name: str) -> Path:
    """The program installed next to this interpreter (the virtualenv), else the one on PATH."""
    for directory in (Path(sys.executable).parent, Path(sys.prefix) / "bin"):
        candidate = directory / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    if found is None:
        raise StackError(
            f"{name} was found neither next to {sys.executable} nor on PATH; "
            "install the development extra: pip install -e '.[dev]'"
        )
    return Path(found)


async def answers_ok(url: str) -> bool:
    """Whether an HTTP GET of `url` answers 200."""
    async with httpx.AsyncClient(timeout=_HTTP_PROBE_SECONDS) as client:
        response = await client.get(url)
    return response.status_code == httpx.codes.OK


def _die_with_parent_hook() -> Callable[[], None] | None:
    if sys.platform != "linux":
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def die_with_parent() -> None:
        # Runs in the child after the switch to `RunAs` (which would clear the setting).
        # The kernel ties it to the forking thread: spawn from the event loop thread only.
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            # The launcher died before the setting took effect; nobody would signal us.
            os.kill(os.getpid(), signal.SIGKILL)

    return die_with_parent


class ChildProcess:
    """One program in its own session, its output appended to a log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        run_as: RunAs | None = None,
        stop_signal: signal.Signals = signal.SIGTERM,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.run_as = run_as
        self.stop_signal = stop_signal
        self._popen: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    @property
    def returncode(self) -> int | None:
        """The exit code once the process has been stopped or waited for."""
        return self._popen.returncode if self._popen is not None else None

    def spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
                preexec_fn=_die_with_parent_hook(),  # noqa: PLW1509 - calls prctl and kill only
                user=self.run_as.uid if self.run_as else None,
                group=self.run_as.gid if self.run_as else None,
                extra_groups=[] if self.run_as else None,
            )

    def has_exited(self) -> bool:
        """Whether the program ended. It is left unreaped, so its pid cannot be reused yet."""
        if self._popen is None or self._popen.returncode is not None:
            return True
        try:
            status = os.waitid(os.P_PID, self._popen.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return status is not None

    async def exited(self) -> None:
        """Return once the program ended, without reaping it."""
        # Polled rather than left to asyncio's child watcher, which would reap the child: its
        # pid must stay ours until its process group has been swept.
        while not self.has_exited():  # noqa: ASYNC110
            await asyncio.sleep(_POLL_SECONDS)

    async def wait(self) -> int:
        """Wait for the end, kill whatever the program left in its group, reap; the exit code."""
        await self.exited()
        assert self._popen is not None
        if self._popen.returncode is None:
            # Still unreaped, so the group id is still ours: helpers the program left behind die.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._popen.pid, signal.SIGKILL)
        return self._popen.wait()

    async def run(self) -> int:
        """Spawn, wait for the end; the exit code. Cancelling kills the program."""
        self.spawn()
        try:
            return await self.wait()
        finally:
            await self.stop(0)

    # ASYNC109: `timeout` is the grace period before SIGKILL, not a deadline for the call.
    async def stop(self, timeout: float) -> None:  # noqa: ASYNC109
        """Ask politely with `stop_signal`; after `timeout` seconds kill the whole group."""
        if self._popen is None or self._popen.returncode is not None:
            return
        if not self.has_exited():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._popen.pid, self.stop_signal)
            try:
                await asyncio.wait_for(self.exited(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._popen.pid, signal.SIGKILL)
        await self.wait()

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last lines this run wrote to the log."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset)
                text = log.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Supervised(abc.ABC):
    """The lifecycle every server and service shares: prepare, spawn, wait until ready, stop.

    Subclasses say what to run and how to tell it is ready; this class owns the
    timeouts, the error messages with the log tail, and the cleanup after a failed start.
    """

    stop_signal: signal.Signals = signal.SIGTERM

    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.process: ChildProcess | None = None
        self.startup_seconds: float | None = None
        self._probe_error = ""

    @abc.abstractmethod
    def command(self) -> list[str]:
        """The program and its arguments."""

    @abc.abstractmethod
    async def is_ready(self) -> bool:
        """One readiness probe; raising counts as not ready (the last error is reported)."""

    def environment(self) -> dict[str, str] | None:
        """The child's environment; None inherits ours."""
        return None

    def run_as(self) -> RunAs | None:
        """The account to run as; None keeps ours."""
        return None

    async def prepare(self) -> None:  # noqa: B027 - optional hook, empty on purpose
        """First-start work before the spawn (directories, credentials, initdb)."""

    async def after_ready(self) -> None:  # noqa: B027 - optional hook, empty on purpose
        """Idempotent setup once ready (the database, the bucket)."""

    # ASYNC109: an outer asyncio.timeout would lose the error message with the log tail.
    async def start(self, timeout: float = DEFAULT_START_TIMEOUT_SECONDS) -> None:  # noqa: ASYNC109
        """Start and return once ready; on any failure nothing is left running."""
        began = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                await self.prepare()
                self.process = ChildProcess(
                    self.name,
                    self.command(),
                    log_path=self.log_path,
                    env=self.environment(),
                    run_as=self.run_as(),
                    stop_signal=self.stop_signal,
                )
                self.process.spawn()
                await self._wait_ready()
                await self.after_ready()
        except TimeoutError as error:
            message = self.failure(f"did not become ready within {timeout:g} s{self._probe_error}")
            await self.stop()
            raise StartError(message) from error
        except StackError:
            await self.stop()
            raise
        except Exception as error:
            message = self.failure(f"failed while starting: {type(error).__name__}: {error}")
            await self.stop()
            raise StartError(message) from error
        except BaseException:
            await self.stop()
            raise
        self.startup_seconds = time.monotonic() - began

    async def _wait_ready(self) -> None:
        assert self.process is not None
        while True:
            if self.process.has_exited():
                code = await self.process.wait()
                raise StartError(self.failure(f"exited with code {code} while starting"))
            try:
                if await self.is_ready():
                    return
                self._probe_error = ""
            # Any probe failure means "not yet"; the last one is reported on timeout.
            except Exception as error:
                self._probe_error = f" (last probe: {type(error).__name__}: {error})"
            await asyncio.sleep(_READY_PROBE_SECONDS)

    async def exited(self) -> None:
        """Return when the running program ends (used to notice a crash)."""
        if self.process is not None:
            await self.process.exited()

    # ASYNC109: as in ChildProcess.stop, the grace period before SIGKILL.
    async def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT_SECONDS) -> None:  # noqa: ASYNC109
        """Stop gracefully, killing after `timeout` seconds; a no-op when not running."""
        if self.process is not None:
            await self.process.stop(timeout)

    def failure(self, what: str) -> str:
        """An error message about this child, ending with the tail of its log."""
        tail = self.process.log_tail() if self.process is not None else ""
        message = f"{self.name} {what}"
        if tail:
            message += f"; last lines of {self.log_path}:\n{tail}"
        return message
