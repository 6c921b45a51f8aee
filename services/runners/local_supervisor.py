"""The supervisor of one local workload: runs its command, enforces its limits, records its end.

`LocalRunner.create` starts `python -m ckrv.services.runners.local_supervisor
<folder>` detached (`setsid --fork`), so it lives on when its creator dies, and
returns at once. The supervisor holds the folder's lock for its whole life, so
the lock tells anyone whether the workload is still watched over. It

- lowers its session's CPU priority to the lowest (`WORKLOAD_NICENESS`), so that
  on a machine busy with jobs the services still get the CPU they need;
- starts the command in a process group of its own, output appended to
  `output.log`, its data segment capped at the memory limit;
- on a stop request (`stop.json` and SIGUSR1) or at the time limit sends SIGTERM
  to each of the workload's processes, and SIGKILL after the grace period;
- when the command ends, kills whatever it left behind (as a child subreaper, it
  inherits even processes that left the group), removes the input files, and
  records the exit code and why it ended.

Standard library only: every millisecond here delays the job's first log line.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import math
import os
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from ckrv.services.runners.lifecycle import FailureReason, WorkloadState
from ckrv.services.runners.local_folder import (
    STOP_SIGNAL,
    LaunchPlan,
    StatusRecord,
    WorkloadFolder,
    utc_now,
)

# Ending the supervisor politely stops the workload as a stop request would.
SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_SWEEP_RETRY_SECONDS = 0.005
_PROC = Path("/proc")
# Jobs are batch work: the dispatcher, watcher and gateway must not queue behind them.
WORKLOAD_NICENESS = 19

_libc = ctypes.CDLL(None, use_errno=True)


def _children_by_parent() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # ended while we looked
            continue
        # The command name may hold spaces and parentheses: the fields start after the last ")".
        parent = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    return children


def descendants(root: int) -> list[int]:
    """Every process below `root`, parents before their children."""
    children = _children_by_parent()
    found: list[int] = []
    pending = [root]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def _signal_each(pids: list[int], signum: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def exit_code_of(returncode: int) -> int:
    """The shell's and Kubernetes' convention: 128 + N for a process killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


class Supervisor:
    def __init__(self, folder: WorkloadFolder, record: StatusRecord) -> None:
        self.folder = folder
        self.record = record
        self.plan: LaunchPlan = folder.read_launch_plan()
        self.wakeup, wakeup_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # Handlers do nothing themselves: each signal's number arrives on the wakeup pipe,
        # which the wait loop watches next to the command's pidfd.
        signal.set_wakeup_fd(wakeup_write)
        for signum in (STOP_SIGNAL, *SHUTDOWN_SIGNALS):
            signal.signal(signum, lambda *_: None)
        # Orphans of the workload become our children instead of init's, so none escapes.
        _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

    def _record(self, record: StatusRecord) -> None:
        self.record = record
        self.folder.write_status(record)

    def _finish(
        self,
        state: WorkloadState,
        *,
        exit_code: int | None = None,
        reason: FailureReason | None = None,
        message: str | None = None,
    ) -> None:
        self.folder.remove_input()
        self._record(
            self.record.finished(state, exit_code=exit_code, reason=reason, message=message)
        )

    def run(self) -> None:
        # Recorded before the stop request is read: a stopper that does not see our pid yet
        # wrote its request before we read it (see LocalRunner.stop).
        self._record(dataclasses.replace(self.record, supervisor_pid=os.getpid()))
        if self.folder.stop_grace() is not None:
            self._finish(
                WorkloadState.FAILED,
                reason=FailureReason.STOPPED,
                message="stopped before it started",
            )
            return
        started_at = utc_now()
        problem = self._program_problem()
        if problem is None:
            try:
                process = self._spawn()
            except OSError as error:
                problem = f"{self.plan.program}: {error.strerror or error}"
        if problem is not None:
            self._finish(WorkloadState.FAILED, reason=FailureReason.START_ERROR, message=problem)
            return
        # Recorded once the pid is known; the command may have written output already.
        self._record(
            dataclasses.replace(
                self.record, state=WorkloadState.RUNNING, pid=process.pid, started_at=started_at
            )
        )
        reason = self._wait(process)
        exit_code = exit_code_of(process.wait())
        self._sweep()
        if reason is not None:
            message = (
                f"ran past its time limit of {self.plan.time_limit_seconds:g} s"
                if reason is FailureReason.DEADLINE_EXCEEDED
                else "stopped on request"
            )
            self._finish(WorkloadState.FAILED, exit_code=exit_code, reason=reason, message=message)
        elif exit_code == 0:
            self._finish(WorkloadState.SUCCEEDED, exit_code=0)
        else:
            self._finish(
                WorkloadState.FAILED,
                exit_code=exit_code,
                reason=FailureReason.ERROR,
                message=self._failure_message(exit_code),
            )

    def _program_problem(self) -> str | None:
        program = self.plan.program
        if "/" in program:
            if os.path.isfile(program) and os.access(program, os.X_OK):
                return None
            return f"{program}: not an executable file"
        if shutil.which(program, path=self.plan.env.get("PATH", os.defpath)) is None:
            return f"{program}: not found on the workload's PATH"
        return None

    def _failure_message(self, exit_code: int) -> str:
        if exit_code > 128 and exit_code - 128 in signal.valid_signals():
            message = f"killed by {signal.Signals(exit_code - 128).name}"
        else:
            message = f"exited with code {exit_code}"
        if self.plan.memory_limit_bytes is not None:
            # Without a cgroup there is no OOM killer to blame: allocations past the limit fail.
            message += (
                f"; each of its processes may allocate at most "
                f"{self.plan.memory_limit_bytes} bytes of data"
            )
        return message

    def _spawn(self) -> subprocess.Popen[bytes]:
        output = os.open(
            self.folder.output_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        try:
            return subprocess.Popen(
                self.plan.argv,
                cwd=self.plan.cwd,
                env=self.plan.env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                process_group=0,
                preexec_fn=self._limit_child,  # noqa: PLW1509 - we are single-threaded
            )
        finally:
            os.close(output)

    def _limit_child(self) -> None:
        """Runs in the forked child before it executes the command."""
        limit = self.plan.memory_limit_bytes
        if limit is not None:
            # The data limit rather than the address space: it counts what a process
            # writes to, not what runtimes like V8 or Go merely reserve.
            resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
        supervisor = os.getppid()
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != supervisor:  # we died before the setting took effect
            os.kill(os.getpid(), signal.SIGKILL)

    def _workload_processes(self, process: subprocess.Popen[bytes]) -> list[int]:
        """The processes that are the workload: ours, minus bubblewrap's own two."""
        processes = descendants(os.getpid())
        if self.plan.sandboxed:
            wrapper = set(_children_by_parent().get(process.pid, [])) | {process.pid}
            processes = [pid for pid in processes if pid not in wrapper]
        return processes

    def _wait(self, process: subprocess.Popen[bytes]) -> FailureReason | None:
        """Wait for the command to end, stopping it when asked or late; why it was stopped."""
        pidfd = os.pidfd_open(process.pid)
        selector = selectors.DefaultSelector()
        selector.register(pidfd, selectors.EVENT_READ)
        selector.register(self.wakeup, selectors.EVENT_READ)
        deadline = time.monotonic() + self.plan.time_limit_seconds
        reason: FailureReason | None = None
        kill_at = math.inf
        try:
            while True:
                now = time.monotonic()
                if reason is None and now >= deadline:
                    reason = FailureReason.DEADLINE_EXCEEDED
                    kill_at = self._terminate(process, self.plan.grace_seconds)
                if now >= kill_at:
                    _signal_each([process.pid, *descendants(os.getpid())], signal.SIGKILL)
                    kill_at = math.inf
                wake_at = kill_at if reason is not None else deadline
                timeout = None if wake_at == math.inf else max(0.0, wake_at - now)
                for key, _ in selector.select(timeout):
                    if key.fd == pidfd:
                        return reason
                    self._drain_wakeup()
                    grace = self.folder.stop_grace()
                    grace = self.plan.grace_seconds if grace is None else grace
                    if reason is None:
                        reason = FailureReason.STOPPED
                        kill_at = self._terminate(process, grace)
                    else:
                        kill_at = min(kill_at, time.monotonic() + grace)
        finally:
            selector.close()
            os.close(pidfd)

    def _drain_wakeup(self) -> None:
        # The signals' numbers do not matter: every signal we take means stop.
        with contextlib.suppress(BlockingIOError):
            while os.read(self.wakeup, 64):
                pass

    def _terminate(self, process: subprocess.Popen[bytes], grace_seconds: float) -> float:
        """SIGTERM to every process of the workload; when to send SIGKILL."""
        _signal_each(self._workload_processes(process), signal.SIGTERM)
        return time.monotonic() + grace_seconds

    def _sweep(self) -> None:
        """Kill and reap everything the command left behind, until no child is left."""
        while True:
            _signal_each(descendants(os.getpid()), signal.SIGKILL)
            try:
                while os.waitpid(-1, os.WNOHANG)[0] > 0:
                    pass
            except ChildProcessError:
                return
            time.sleep(_SWEEP_RETRY_SECONDS)


def main(arguments: list[str]) -> int:
    (folder_path,) = arguments
    folder = WorkloadFolder(Path(folder_path))
    if not folder.take_lock_for_life():
        return 0  # another supervisor has it
    record = folder.read_status()
    if record.state is not WorkloadState.PENDING or record.supervisor_pid is not None:
        return 0  # an earlier supervisor ran it, or began to: it must never run twice
    _yield_cpu()
    Supervisor(folder, record).run()
    return 0


def _yield_cpu() -> None:
    """Give this workload, the supervisor with every process it starts, the lowest CPU priority.

    The supervisor leads a session of its own, and with the kernel's autogroup scheduling
    (the default on desktop distributions) each session is one scheduling group, weighed
    as much as all the services' session: a hundred workloads would leave the services a
    hundredth of the CPU whatever their processes' nice values. So the session's group
    is lowered too; the processes' own value counts where autogroups are off.
    """
    os.nice(WORKLOAD_NICENESS)
    with contextlib.suppress(OSError):  # a kernel without autogroup scheduling
        (_PROC / "self" / "autogroup").write_text(str(WORKLOAD_NICENESS))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
