"""Gateway settings (`CKRV_GATEWAY_*`)."""

from __future__ import annotations

from typing import Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from ckrv.services.common.settings import Environment, ServiceSettings, dev_default


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CKRV_GATEWAY_")

    http_port: int = Field(default=8080, ge=0, le=65535, description="Port of the HTTP API.")
    allow_local_repositories: bool = Field(
        default=False,
        description="Accept local paths and file:// repository URLs; only with CKRV_ENV=dev.",
    )
    upgrade_url: str = Field(
        default="https://ckrv.dev/pricing", description="Where a user over quota can upgrade."
    )
    database_pool_size: int = Field(
        default=30,
        ge=1,
        le=200,
        description="PostgreSQL connections for requests; more requests wait for one.",
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

    public_url: str | None = dev_default(
        None,
        "Address users and the CLI reach the gateway at (issuer and activation page); "
        "in development it defaults to the HTTP host and port.",
    )
    signing_keys: SecretStr | None = dev_default(
        None,
        "JSON Web Key Set of private RSA keys; the first signs access tokens. "
        "In development a key is generated at start (tokens end with the process).",
    )
    access_token_seconds: int = Field(
        default=900, ge=60, le=900, description="Lifetime of access tokens (at most 15 min)."
    )
    refresh_token_days: int = Field(default=30, ge=1, description="Lifetime of refresh tokens.")
    device_code_seconds: int = Field(
        default=900, ge=60, description="How long a device-flow code can be approved."
    )
    poll_interval_seconds: int = Field(
        default=5, ge=1, description="Minimum seconds between the CLI's token polls."
    )
    oauth_clients: tuple[str, ...] = Field(
        default=("ckrv-cli",), description="Client ids of the public clients that may sign in."
    )

    allow_signup: bool = Field(
        default=True,
        description="Let anyone create a local account (email, password) on the activation page.",
    )
    session_secret: SecretStr = dev_default(
        SecretStr("ckrv-dev-session-secret"),
        "Key that signs the activation page's session cookie (32+ random bytes in production).",
    )
    session_max_age_seconds: int = Field(
        default=8 * 3600, ge=60, description="How long a sign-in on the activation page lasts."
    )
    oidc_issuer: str | None = Field(
        default=None,
        description="Issuer URL of an upstream OpenID Connect provider offered on the "
        "activation page; its discovery document is read from `/.well-known/openid-configuration`.",
    )
    oidc_client_id: str | None = Field(
        default=None, description="The gateway's client id at the OpenID Connect provider."
    )
    oidc_client_secret: SecretStr | None = Field(
        default=None, description="The gateway's client secret at the OpenID Connect provider."
    )

    log_heartbeat_seconds: float = Field(
        default=15.0,
        gt=0,
        description="A followed log stream sends a comment after this long without a line, "
        "so proxies and clients know the connection is alive.",
    )
    log_retry_milliseconds: int = Field(
        default=1000,
        ge=0,
        description="The `retry:` a log stream sends: how soon a browser reconnects after a cut.",
    )
    log_follower_queue_lines: int = Field(
        default=1000,
        ge=1,
        description="Live lines held for one log stream that its client has not taken yet; "
        "beyond it the stream reads on from JetStream at the client's own pace.",
    )
    log_end_quiet_seconds: float = Field(
        default=1.0,
        ge=0,
        description="After a job ends, its log stream closes once no line came for this long "
        "(the last lines may reach JetStream just after the job's end).",
    )
    log_ticket_seconds: int = Field(
        default=300,
        ge=10,
        description="A log stream ticket is valid this long after it is issued, and beyond "
        "that while its job runs and for this long after the job ended.",
    )
    log_ticket_max_age_seconds: int = Field(
        default=24 * 3600,
        ge=60,
        description="No log stream ticket is accepted longer than this after it was issued.",
    )
    artifact_url_seconds: int = Field(
        default=300,
        ge=10,
        le=3600,
        description="How long a result's download URL (the redirect of "
        "`/v1/jobs/{id}/artifacts/{name}`) is valid; a download must start within it.",
    )

    @property
    def oidc_enabled(self) -> bool:
        return self.oidc_issuer is not None

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.http_host}:{self.http_port}").rstrip("/")

    @model_validator(mode="after")
    def _development_switches_only_in_dev(self) -> Self:
        enabled = [
            name
            for name in ("allow_local_repositories",)
            if getattr(self, name) and self.env is not Environment.DEV
        ]
        if enabled:
            names = ", ".join(self.env_var(name) for name in enabled)
            raise ValueError(f"{names} can only be enabled with CKRV_ENV=dev")
        return self

    @model_validator(mode="after")
    def _oidc_complete(self) -> Self:
        if self.oidc_issuer is not None and not (self.oidc_client_id and self.oidc_client_secret):
            names = f"{self.env_var('oidc_client_id')} and {self.env_var('oidc_client_secret')}"
            raise ValueError(f"{self.env_var('oidc_issuer')} needs {names}")
        return self
