"""Log-relay settings (`CKRV_LOG_RELAY_*`)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from ckrv.services.common.settings import ServiceSettings


class LogRelaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CKRV_LOG_RELAY_")

    max_line_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        description="Longest line of output taken as one line; a longer one is cut into lines "
        "of this size (each line is then split into entries of at most 16,384 characters).",
    )
    publish_timeout_seconds: float = Field(
        default=5.0, gt=0, description="How long a log entry's publish may wait for its ack."
    )
    retry_delay_seconds: float = Field(
        default=2.0,
        gt=0,
        description="After a failure (NATS, the database or S3 unreachable), how long before "
        "following that workload again from its last saved position.",
    )
