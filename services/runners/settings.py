"""Runner settings (`CKRV_RUNNER_*`): which backend holds workloads, how the local one runs them."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from ckrv.events.catalog import RunnerBackend
from ckrv.services.common.settings import CkrvSettings


class SandboxMode(StrEnum):
    """Whether the local runner wraps workloads in bubblewrap."""

    AUTO = "auto"
    """When bubblewrap is installed and works here; a plain process otherwise."""
    REQUIRED = "required"
    """Always; the runner refuses to start without a working bubblewrap."""
    OFF = "off"
    """Never: the workload sees the machine as the runner's user does."""


class RunnerSettings(CkrvSettings):
    model_config = SettingsConfigDict(env_prefix="CKRV_RUNNER_")

    backend: RunnerBackend = Field(
        default=RunnerBackend.LOCAL, description="Where workloads run: `local` or `kubernetes`."
    )
    root: Path = Field(
        default=Path(".ckrv-state/runner"),
        description="Local runner: the folder holding one folder per workload.",
    )
    sandbox: SandboxMode = Field(
        default=SandboxMode.AUTO,
        description="Local runner: `auto`, `required` or `off` (bubblewrap around workloads).",
    )
    sandbox_read_only_paths: tuple[Path, ...] = Field(
        default=(),
        description="Local runner: folders a sandboxed workload may read besides the system, "
        "the Python installation and Chakravarti's code (e.g. where agent CLIs live).",
    )
    poll_interval_seconds: float = Field(
        default=0.05,
        gt=0,
        description="Local runner: how often watchers and output followers look for changes.",
    )
