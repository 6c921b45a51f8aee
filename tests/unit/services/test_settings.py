"""Settings refuse development defaults outside CKRV_ENV=dev and read per-service prefixes."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ckrv.services.common.settings import CommonSettings, Environment
from ckrv.services.gateway.settings import GatewaySettings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("CKRV_"):
            monkeypatch.delenv(name)


def test_production_refuses_every_dev_default_by_its_variable_name() -> None:
    with pytest.raises(ValidationError) as refused:
        CommonSettings()
    message = str(refused.value)
    for variable in (
        "CKRV_NATS_URL",
        "CKRV_DATABASE_URL",
        "CKRV_S3_ENDPOINT",
        "CKRV_S3_ACCESS_KEY",
        "CKRV_S3_SECRET_KEY",
        "CKRV_CREDENTIAL_KEYS",
    ):
        assert variable in message
    assert "CKRV_S3_BUCKET" not in message


def test_dev_environment_allows_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CKRV_ENV", "dev")
    settings = CommonSettings()
    assert settings.env is Environment.DEV
    assert settings.nats_url == "nats://127.0.0.1:4222"


def test_production_with_explicit_values_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "CKRV_NATS_URL": "nats://nats.internal:4222",
        "CKRV_DATABASE_URL": "postgresql://svc:pw@db.internal/ckrv",
        "CKRV_S3_ENDPOINT": "https://s3.internal",
        "CKRV_S3_ACCESS_KEY": "AKIA",
        "CKRV_S3_SECRET_KEY": "very-secret",
        "CKRV_CREDENTIAL_KEYS": "k1:" + "QUFB" * 8,
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    settings = CommonSettings()
    assert settings.env is Environment.PRODUCTION
    assert settings.nats_url == "nats://nats.internal:4222"
    # Secrets never show in a repr or a log line.
    assert "very-secret" not in repr(settings)
    assert settings.s3_secret_key.get_secret_value() == "very-secret"


def test_service_settings_use_their_own_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    # The gateway has development defaults (public URL, keys, session secret): dev allows them.
    monkeypatch.setenv("CKRV_ENV", "dev")
    monkeypatch.setenv("CKRV_GATEWAY_HTTP_PORT", "9123")
    monkeypatch.setenv("CKRV_HTTP_PORT", "1")
    assert GatewaySettings().http_port == 9123


def test_invalid_value_is_a_validation_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CKRV_GATEWAY_HTTP_PORT", "not-a-port")
    with pytest.raises(ValueError, match="http_port"):
        GatewaySettings()
