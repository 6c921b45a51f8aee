"""The runner interface: what the dispatcher, watcher and log-relay ask of any workload backend.

A workload runs one attempt of a job: a command (`ckrv-worker run`) with secret
input files, a time limit and resource limits. Backends (`local` subprocesses,
`kubernetes` batch/v1 Jobs) differ in how; every one passes the shared contract
tests in `tests/runner_contract.py`.

Each backend keeps its state outside the process that uses it (a folder, the
Kubernetes API), so a restarted dispatcher, or a watcher in another process, sees
the same workloads through a fresh runner.
"""

from __future__ import annotations

import abc
import builtins
import re
from collections.abc import AsyncIterator, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import ClassVar, Self
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ckrv.events.catalog import RunnerBackend, workload_name
from ckrv.services.runners.lifecycle import FailureReason, WorkloadState

__all__ = [
    "INPUT_DIR_ENV",
    "WORKSPACE_DIR_ENV",
    "FailureReason",
    "OutputChunk",
    "Runner",
    "RunnerError",
    "Workload",
    "WorkloadNotFound",
    "WorkloadRequest",
    "WorkloadState",
    "WorkloadStatus",
]

INPUT_DIR_ENV = "CKRV_INPUT_DIR"
"""The variable that tells a workload where its input files are."""
WORKSPACE_DIR_ENV = "CKRV_WORKSPACE"
"""The variable naming the workload's writable folder, also its working directory."""

# Kubernetes' rules, so a request valid for one backend is valid for all.
_INPUT_FILE_NAME = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LABEL_WORD = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_LABEL_NAME = re.compile(rf"^([a-z0-9]([-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_LABEL_WORD}$")
_LABEL_VALUE = re.compile(rf"^({_LABEL_WORD})?$")


class RunnerError(Exception):
    """A runner could not do what it was asked."""


class WorkloadNotFound(RunnerError):
    """No workload has that name (never created, or deleted)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no workload named {name!r}")
        self.name = name


class WorkloadRequest(BaseModel):
    """Everything a backend needs to run one attempt of a job."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    job_id: UUID = Field(description="The job this workload runs.")
    attempt: int = Field(ge=1, description="Which attempt of the job it is (1-based).")
    command: tuple[str, ...] = Field(
        min_length=1, description="Program and arguments, e.g. `('ckrv-worker', 'run')`."
    )
    input_files: Mapping[str, bytes] = Field(
        default_factory=dict,
        description="Secret inputs (spec, git credential, upload URLs) by file name; the "
        f"workload finds them in the private folder named by `{INPUT_DIR_ENV}`.",
    )
    env: Mapping[str, str] = Field(
        default_factory=dict, description="Environment variables; never put secrets here."
    )
    time_limit_seconds: int = Field(
        gt=0, description="Wall-clock limit; past it the workload is stopped and fails."
    )
    grace_seconds: float = Field(
        default=10.0,
        ge=0,
        description="How long the workload may take to exit after SIGTERM before it is killed.",
    )
    memory_limit_bytes: int | None = Field(
        default=None, gt=0, description="Memory the workload may use; none for no limit."
    )
    cpu_limit: float | None = Field(
        default=None, gt=0, description="CPU cores the workload may use; none for no limit."
    )
    labels: Mapping[str, str] = Field(
        default_factory=dict, description="Kubernetes-style labels to find the workload by."
    )

    @property
    def name(self) -> str:
        """The deterministic name, `ckrv-job-<job_id>-<attempt>`: a retry finds the same one."""
        return workload_name(self.job_id, self.attempt)

    @field_validator("command")
    @classmethod
    def _no_empty_program(cls, command: tuple[str, ...]) -> tuple[str, ...]:
        if not command[0]:
            raise ValueError("the program (first word of the command) must not be empty")
        if any("\0" in word for word in command):
            raise ValueError("command words must not contain NUL characters")
        return command

    @field_validator("input_files")
    @classmethod
    def _input_file_names(cls, files: Mapping[str, bytes]) -> Mapping[str, bytes]:
        for name in files:
            if not _INPUT_FILE_NAME.match(name) or name in {".", ".."}:
                raise ValueError(
                    f"input file name {name!r} must be 1-253 letters, digits, '-', '_' or '.'"
                )
        return files

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: Mapping[str, str]) -> Mapping[str, str]:
        for name, value in env.items():
            if not _ENV_NAME.match(name):
                raise ValueError(f"environment variable name {name!r} is not valid")
            if name in (INPUT_DIR_ENV, WORKSPACE_DIR_ENV):
                raise ValueError(f"{name} is set by the runner")
            if "\0" in value:
                raise ValueError(f"environment variable {name} must not contain NUL characters")
        return env

    @field_validator("labels")
    @classmethod
    def _label_syntax(cls, labels: Mapping[str, str]) -> Mapping[str, str]:
        for name, value in labels.items():
            if not _LABEL_NAME.match(name):
                raise ValueError(f"label name {name!r} is not a valid Kubernetes label name")
            if not _LABEL_VALUE.match(value):
                raise ValueError(f"label {name}={value!r}: not a valid Kubernetes label value")
        return labels


@dataclass(frozen=True)
class WorkloadStatus:
    """One observation of a workload."""

    name: str
    job_id: UUID
    attempt: int
    state: WorkloadState
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    exit_code: int | None = None
    """The command's exit code once it ended; 128 + N when signal N killed it."""
    reason: FailureReason | None = None
    """Why it failed; None unless `state` is failed."""
    message: str | None = None
    """Details for people, e.g. which program could not be started."""

    @property
    def is_finished(self) -> bool:
        return self.state.is_finished


@dataclass(frozen=True)
class OutputChunk:
    """A piece of a workload's output (stdout and stderr interleaved as written)."""

    offset: int
    """Where `data` starts in the whole output; a reader resumes at `offset + len(data)`."""
    data: bytes

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


@dataclass(frozen=True)
class Workload:
    """What `Runner.create` answers: the workload, and whether this call created it."""

    status: WorkloadStatus
    created: bool
    """False when a workload of that name already existed and was left as it was."""

    @property
    def name(self) -> str:
        return self.status.name


class Runner(abc.ABC):
    """A workload backend. Every method may be called from any process, at any time."""

    backend: ClassVar[RunnerBackend]

    @abc.abstractmethod
    async def create(self, request: WorkloadRequest) -> Workload:
        """Start a workload for `request`; if one of that name exists, return it untouched.

        Retrying after a crash is therefore safe: there is never a second workload.
        """

    @abc.abstractmethod
    async def get(self, name: str) -> WorkloadStatus | None:
        """The workload's status now; None if there is no such workload."""

    @abc.abstractmethod
    async def list(self) -> builtins.list[WorkloadStatus]:
        """Every workload there is, finished ones included until collected."""

    @abc.abstractmethod
    def watch(self) -> AsyncIterator[WorkloadStatus]:
        """Every workload's status now, then each change as it happens, until cancelled.

        At least once: a status may be reported again (after the backend reconnects), so
        consumers must be idempotent. A deleted workload is reported once with state `gone`.
        """

    @abc.abstractmethod
    def read_output(
        self, name: str, offset: int = 0, *, follow: bool = False
    ) -> AsyncIterator[OutputChunk]:
        """The workload's output from byte `offset`; with `follow`, until the workload ends.

        Raises `WorkloadNotFound` for an unknown workload.
        """

    @abc.abstractmethod
    async def stop(self, name: str, grace_seconds: float) -> None:
        """Stop the workload: SIGTERM to its processes, SIGKILL after `grace_seconds`.

        Returns once none of its processes runs. The workload is then finished (failed,
        reason `Stopped`, unless it had ended already) or gone, as the backend does it.
        Stopping an unknown, finished or never-started workload is not an error; one
        that has not started yet never will.
        """

    @abc.abstractmethod
    async def release_input(self, name: str) -> None:
        """Remove the workload's secret input files now: its job has ended and needs them no more.

        The workload itself stays, its status and output readable (the log-relay may still be
        reading), until it is deleted or collected. The worker reads its inputs as it starts,
        so one that has not started by then may fail to. Releasing again, or releasing an
        unknown workload, is not an error.
        """

    @abc.abstractmethod
    async def delete(self, name: str) -> None:
        """Remove the workload with its inputs and output, killing it first if it runs.

        Deleting an unknown workload is not an error.
        """

    @abc.abstractmethod
    async def collect_garbage(
        self, *, finished_before: datetime | None = None, names: Collection[str] = ()
    ) -> builtins.list[str]:
        """Delete the workloads in `names`, and those that finished before `finished_before`.

        Answers the names of the workloads it deleted.
        """

    async def close(self) -> None:  # noqa: B027 - optional hook, empty on purpose
        """Release connections (a Kubernetes API client); the runner is unusable after."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
