"""Dispatcher settings (`CKRV_DISPATCHER_*`)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from ckrv.services.common.settings import ServiceSettings


def _installed_worker() -> tuple[str, ...]:
    # The worker next to this Python, when installed there: a service started without the
    # virtual environment on PATH still finds it.
    beside = Path(sys.executable).parent / "ckrv-worker"
    program = str(beside) if beside.exists() else shutil.which("ckrv-worker") or "ckrv-worker"
    return (program, "run")


class DispatcherSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CKRV_DISPATCHER_")

    capacity: int = Field(
        default=100,
        ge=1,
        description="Workloads that may run at once, all users together.",
    )
    stop_grace_seconds: float = Field(
        default=10.0,
        ge=0,
        description="How long a cancelled workload may take to exit before it is killed.",
    )
    worker_command: tuple[str, ...] = Field(
        default_factory=_installed_worker,
        min_length=1,
        description="The program (and arguments) a workload runs: `ckrv-worker run`.",
    )
    workload_env: dict[str, str] = Field(
        default_factory=dict,
        description="Environment for every workload, e.g. `GIT_SSL_CAINFO` for a private CA; "
        "never secrets (those go in the workload's input files).",
    )
    workload_memory_limit_bytes: int | None = Field(
        default=4 * 1024**3, gt=0, description="Memory each workload may use."
    )
    upload_url_margin_seconds: int = Field(
        default=600,
        ge=0,
        description="How long upload URLs stay valid beyond the job's time limit.",
    )
    admission_interval_seconds: float = Field(
        default=1.0,
        gt=0,
        description="How often admission runs without being woken by an event.",
    )
    dispatch_lease_seconds: float = Field(
        default=30.0,
        gt=0,
        description="How long a dispatch (the claim, then the workload's creation) is left to "
        "the replica that started it; after that another replica finishes it, as the first "
        "one may have died. Longer than a workload takes to create.",
    )
