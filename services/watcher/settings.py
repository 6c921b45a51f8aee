"""Watcher settings (`CKRV_WATCHER_*`)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from ckrv.services.common.settings import ServiceSettings


class WatcherSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CKRV_WATCHER_")

    reconcile_interval_seconds: float = Field(
        default=30.0, gt=0, description="How often running jobs are checked against workloads."
    )
    pending_timeout_seconds: float = Field(
        default=300.0,
        gt=0,
        description="How long a workload may wait to start before its attempt counts as lost.",
    )
    run_timeout_margin_seconds: float = Field(
        default=60.0,
        ge=0,
        description="Beyond a job's time limit, how long before the watcher stops it itself "
        "(the runner enforces the limit first).",
    )
    collect_after_seconds: float = Field(
        default=3600.0,
        ge=0,
        description="How long a finished workload (its output, its inputs) is kept.",
    )
    stop_grace_seconds: float = Field(
        default=10.0, ge=0, description="Grace given to a workload the watcher stops."
    )
