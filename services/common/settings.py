"""Settings of every service, from `CKRV_*` environment variables (pydantic-settings).

Fields whose default only makes sense on a developer's machine (loopback
addresses, well-known development passwords) are marked with `dev_default`;
outside `CKRV_ENV=dev` each of them must be set explicitly, so a production
process can never start on development credentials by accident.
"""

from __future__ import annotations

import base64
import enum
from typing import Any, Self

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ckrv.services.common.sealing import KeyRing, KeyRingError

DEV_DEFAULT_MARK = "dev_default"
# Well known, like the other development defaults; the local stack generates a key of its own.
DEVELOPMENT_CREDENTIAL_KEYS = (
    "dev:" + base64.b64encode(b"ckrv-development-key-not-secret!").decode()
)


class Environment(enum.StrEnum):
    DEV = "dev"
    PRODUCTION = "production"


def dev_default(default: Any, description: str) -> Any:
    """A field whose default is refused unless `CKRV_ENV=dev`."""
    return Field(
        default=default, description=description, json_schema_extra={DEV_DEFAULT_MARK: True}
    )


class CkrvSettings(BaseSettings):
    """Base of every settings class: knows the environment and guards dev defaults."""

    model_config = SettingsConfigDict(extra="ignore", env_ignore_empty=True)

    env: Environment = Field(
        default=Environment.PRODUCTION,
        validation_alias=AliasChoices("CKRV_ENV", "env"),
        description="`dev` allows development defaults; anything else requires explicit values.",
    )

    @model_validator(mode="after")
    def _dev_defaults_only_in_dev(self) -> Self:
        if self.env is Environment.DEV:
            return self
        missing = [
            self.env_var(name)
            for name, info in type(self).model_fields.items()
            if isinstance(info.json_schema_extra, dict)
            and info.json_schema_extra.get(DEV_DEFAULT_MARK)
            and name not in self.model_fields_set
        ]
        if missing:
            raise ValueError(
                f"set {', '.join(missing)}: development defaults are only allowed with CKRV_ENV=dev"
            )
        return self

    @classmethod
    def env_var(cls, field_name: str) -> str:
        return f"{cls.model_config.get('env_prefix', '')}{field_name}".upper()


class CommonSettings(CkrvSettings):
    """Connections every service shares."""

    # A malformed secret is reported by its variable's name, never echoed.
    model_config = SettingsConfigDict(env_prefix="CKRV_", hide_input_in_errors=True)

    nats_url: str = dev_default("nats://127.0.0.1:4222", "NATS server URL(s), comma-separated.")
    stream_replicas: int = Field(
        default=1,
        ge=1,
        le=5,
        description="Servers of the JetStream cluster that keep a copy of each stream "
        "(3 on a 3-node cluster); the services create and update the streams with it.",
    )
    database_url: SecretStr = dev_default(
        SecretStr("postgresql://ckrv:ckrv@127.0.0.1:5432/ckrv"),
        "PostgreSQL URL of the read model and plain-row state.",
    )
    s3_endpoint: str = dev_default("http://127.0.0.1:8333", "S3-compatible endpoint URL.")
    s3_access_key: SecretStr = dev_default(SecretStr("ckrv-dev"), "S3 access key id.")
    s3_secret_key: SecretStr = dev_default(SecretStr("ckrv-dev-secret"), "S3 secret key.")
    s3_bucket: str = Field(default="ckrv-artifacts", description="Bucket holding job results.")
    s3_region: str = Field(default="us-east-1", description="Region used to sign S3 requests.")
    log_level: str = Field(default="INFO", description="Root log level.")
    log_format: str = Field(default="json", description="`json` (one object a line) or `text`.")
    credential_keys: SecretStr = dev_default(
        SecretStr(DEVELOPMENT_CREDENTIAL_KEYS),
        "AES keys that encrypt stored git credentials, `kid:base64key,kid2:base64key`: "
        "the first encrypts, every one decrypts (to rotate, put a new key first).",
    )

    @field_validator("credential_keys")
    @classmethod
    def _credential_keys_parse(cls, keys: SecretStr) -> SecretStr:
        try:
            KeyRing.parse(keys.get_secret_value())
        except KeyRingError as error:
            raise ValueError(f"{cls.env_var('credential_keys')}: {error}") from None
        return keys

    def credential_key_ring(self) -> KeyRing:
        return KeyRing.parse(self.credential_keys.get_secret_value())


class ServiceSettings(CkrvSettings):
    """What the service runner needs; each service subclasses it with a `CKRV_<NAME>_` prefix."""

    http_host: str = Field(
        default="127.0.0.1", description="Address of /healthz, /readyz, /metrics."
    )
    http_port: int = Field(default=0, ge=0, le=65535, description="Port of the HTTP endpoints.")
    startup_timeout_seconds: float = Field(
        default=60.0, gt=0, description="How long connecting to dependencies may take at start."
    )
    shutdown_timeout_seconds: float = Field(
        default=10.0, gt=0, description="How long in-flight work may take to finish on shutdown."
    )
