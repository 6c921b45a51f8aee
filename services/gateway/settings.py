"""Gateway settings (`CKRV_GATEWAY_*`)."""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from ckrv.services.common.settings import Environment, ServiceSettings


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CKRV_GATEWAY_")

    http_port: int = Field(default=8080, ge=0, le=65535, description="Port of the HTTP API.")
    dev_auth: bool = Field(
        default=False,
        description="Accept `dev:<email>[:<tier>]` bearer tokens; only with CKRV_ENV=dev.",
    )
    allow_local_repositories: bool = Field(
        default=False,
        description="Accept local paths and file:// repository URLs; only with CKRV_ENV=dev.",
    )
    upgrade_url: str = Field(
        default="https://ckrv.dev/pricing", description="Where a user over quota can upgrade."
    )
    publish_timeout_seconds: float = Field(
        default=2.0, gt=0, description="How long a submission waits for JetStream's ack."
    )
    outbox_interval_seconds: float = Field(
        default=1.0, gt=0, description="How often unconfirmed events are published again."
    )
    outbox_grace_seconds: float = Field(
        default=2.0, ge=0, description="Age before the outbox relay takes over an event."
    )

    @model_validator(mode="after")
    def _development_switches_only_in_dev(self) -> Self:
        enabled = [
            name
            for name in ("dev_auth", "allow_local_repositories")
            if getattr(self, name) and self.env is not Environment.DEV
        ]
        if enabled:
            names = ", ".join(self.env_var(name) for name in enabled)
            raise ValueError(f"{names} can only be enabled with CKRV_ENV=dev")
        return self
