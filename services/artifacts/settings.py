"""Artifacts service settings (`CKRV_ARTIFACTS_*`)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from ckrv.services.common.settings import ServiceSettings


class ArtifactsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CKRV_ARTIFACTS_")

    retention_seconds_override: float | None = Field(
        default=None,
        gt=0,
        description="Keep every finished job's results this long instead of its tier's "
        "`result_retention_days` (for tests and demos).",
    )
    expiry_interval_seconds: float = Field(
        default=60.0, gt=0, description="How often results past their retention are deleted."
    )
    expiry_batch_size: int = Field(
        default=100, ge=1, description="Jobs whose results one expiry pass deletes at most."
    )
