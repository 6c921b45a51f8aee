"""The words every runner backend uses for where a workload is in its life and why it failed.

Standard library only, so the local supervisor can use them without slowing its start.
"""

from __future__ import annotations

from enum import StrEnum


class WorkloadState(StrEnum):
    """Where a workload is: the runner's view, finer than and separate from a job's status."""

    PENDING = "pending"
    """Created, its command not started yet (Kubernetes: scheduling, pulling the image)."""
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    """The command exited with code 0."""
    FAILED = "failed"
    """It ended any other way; `reason` says how."""
    GONE = "gone"
    """Deleted; only `watch` reports it, as the last word about a workload."""

    @property
    def is_finished(self) -> bool:
        return self in (WorkloadState.SUCCEEDED, WorkloadState.FAILED)


class FailureReason(StrEnum):
    """Why a workload failed, in Kubernetes' words where Kubernetes has one."""

    ERROR = "Error"
    """The command exited with a non-zero code."""
    START_ERROR = "StartError"
    """The command could not be started (missing program, not executable)."""
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    """It ran past its time limit and was stopped."""
    OOM_KILLED = "OOMKilled"
    """The kernel killed it for using more memory than its limit."""
    EVICTED = "Evicted"
    """The node ran short of resources and removed it."""
    IMAGE_PULL_BACK_OFF = "ImagePullBackOff"
    """Its container image could not be pulled."""
    STOPPED = "Stopped"
    """Someone asked the runner to stop it."""
    LOST = "Lost"
    """Whatever watched over it vanished without recording an end (machine restart, killed
    supervisor); the job may deserve another attempt."""
