"""Gateway settings (`CKRV_GATEWAY_*`)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from ckrv.services.common.settings import ServiceSettings


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CKRV_GATEWAY_")

    http_port: int = Field(default=8080, ge=0, le=65535, description="Port of the HTTP API.")
