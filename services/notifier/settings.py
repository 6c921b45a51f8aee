"""Notifier settings (`CKRV_NOTIFIER_*`), and the gateway's webhook settings (`CKRV_WEBHOOKS_*`)."""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from ckrv.services.common.settings import CkrvSettings, Environment, ServiceSettings

# Standard Webhooks' schedule: after a failed attempt, the next one immediately, then after
# 5 s, 5 min, 30 min, 2 h, 5 h, 10 h and 10 h.
STANDARD_RETRY_DELAYS = (0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)


class NotifierSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CKRV_NOTIFIER_")

    retry_delays_seconds: tuple[float, ...] = Field(
        default=STANDARD_RETRY_DELAYS,
        description="After the n-th failed attempt of a delivery, how long until the next "
        "(the n-th entry, give or take the jitter); when they are used up the delivery failed.",
    )
    retry_jitter: float = Field(
        default=0.1,
        ge=0,
        lt=1,
        description="Each retry delay is stretched or shortened by up to this fraction, "
        "at random, so failures of many deliveries do not retry in step.",
    )
    attempt_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="An attempt that has no 2xx answer within this long failed.",
    )
    endpoint_concurrency: int = Field(
        default=4, ge=1, description="Attempts one endpoint may have in flight at once."
    )
    max_in_flight: int = Field(
        default=256,
        ge=1,
        description="Attempts in flight at once, all endpoints together; more than "
        "`endpoint_concurrency`, so a slow endpoint leaves room for the others.",
    )
    poll_interval_seconds: float = Field(
        default=1.0,
        gt=0,
        description="How often due deliveries are looked for without being woken by an event "
        "(retries, pings and redeliveries the gateway recorded).",
    )
    disable_after_failures: int = Field(
        default=20,
        ge=1,
        description="Failed attempts in a row (over all its deliveries) that disable an "
        "endpoint until its owner enables it again.",
    )

    @model_validator(mode="after")
    def _room_beside_one_endpoint(self) -> Self:
        if not self.retry_delays_seconds or min(self.retry_delays_seconds) < 0:
            raise ValueError(
                f"{self.env_var('retry_delays_seconds')} needs one or more delays, none negative"
            )
        if self.max_in_flight <= self.endpoint_concurrency:
            raise ValueError(
                f"{self.env_var('max_in_flight')} must be more than "
                f"{self.env_var('endpoint_concurrency')}, or one slow endpoint could hold "
                "every attempt"
            )
        return self

    @property
    def cloud(self) -> bool:
        """Outside development, deliveries go to https URLs on public addresses only."""
        return self.env is not Environment.DEV


class WebhookSettings(CkrvSettings):
    """What the gateway's webhook endpoints need."""

    model_config = SettingsConfigDict(env_prefix="CKRV_WEBHOOKS_")

    previous_secret_grace_seconds: float = Field(
        default=24 * 3600.0,
        gt=0,
        description="After a secret rotation, how long deliveries are signed with the "
        "previous secret as well, so receivers can switch without losing any.",
    )
