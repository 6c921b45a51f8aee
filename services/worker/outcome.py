"""How a worker run ends: its exit codes, and the errors that decide them.

Every failure the worker expects is a `WorkerError` carrying the exit code and a
machine-readable `reason` that the final log line repeats, so the watcher can
tell a timeout from a refused clone without reading the message.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """The worker's exit status, as ARCHITECTURE.md defines it (plus the signal convention)."""

    SUCCEEDED = 0
    JOB_FAILED = 1
    INFRASTRUCTURE_ERROR = 2
    VERIFICATION_FAILED = 3
    # 128 + SIGTERM, what a shell reports for a process stopped by that signal.
    TERMINATED = 143


class WorkerError(Exception):
    """A run that cannot go on; `message` is for the user, `reason` for machines."""

    exit_code: ExitCode = ExitCode.JOB_FAILED

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class JobFailure(WorkerError):
    """The job itself failed: clone refused, branch missing, an agent failed or ran too long."""

    exit_code = ExitCode.JOB_FAILED


class InfrastructureFailure(WorkerError):
    """The worker's surroundings failed: unreadable input, a failed upload, a missing tool."""

    exit_code = ExitCode.INFRASTRUCTURE_ERROR


class VerificationFailure(WorkerError):
    """The agents finished, but the spec's verification commands reject the result."""

    exit_code = ExitCode.VERIFICATION_FAILED


class TimeLimitExceeded(JobFailure):
    """The job ran past its `time_limit_seconds`; what it produced so far is discarded."""

    def __init__(self, time_limit_seconds: int) -> None:
        super().__init__(
            "timeout", f"the job ran past its time limit of {time_limit_seconds} seconds"
        )


class Terminated(BaseException):
    """SIGTERM arrived: stop the running command and leave.

    A BaseException so that no `except Exception` on the way up swallows it.
    """
