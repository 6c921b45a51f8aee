"""Settings from the environment and the bearer token's resolution."""

from __future__ import annotations

import pytest

from ckrv.cli.config import (
    DEFAULT_API_URL,
    DEFAULT_TIMEOUT_SECONDS,
    Settings,
    resolve_token,
    token_from_environment,
)
from ckrv.cli.errors import EXIT_USER_ERROR, ConfigError


def test_defaults_point_at_the_local_stack() -> None:
    settings = Settings.from_env({})
    assert settings.api_url == DEFAULT_API_URL == "http://127.0.0.1:8080/v1"
    assert settings.timeout == DEFAULT_TIMEOUT_SECONDS == 30.0


def test_api_url_and_timeout_are_read_and_normalised() -> None:
    settings = Settings.from_env(
        {"CHAKRAVARTI_API_URL": " https://api.ckrv.dev/v1/ ", "CHAKRAVARTI_TIMEOUT": "2.5"}
    )
    assert settings == Settings(api_url="https://api.ckrv.dev/v1", timeout=2.5)


def test_blank_variables_fall_back_to_the_defaults() -> None:
    settings = Settings.from_env({"CHAKRAVARTI_API_URL": "  ", "CHAKRAVARTI_TIMEOUT": ""})
    assert settings == Settings(api_url=DEFAULT_API_URL, timeout=DEFAULT_TIMEOUT_SECONDS)


@pytest.mark.parametrize("url", ["localhost:8080/v1", "ftp://example.com/v1", "https://", "v1"])
def test_an_api_url_that_is_not_http_is_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="CHAKRAVARTI_API_URL must be an http") as raised:
        Settings.from_env({"CHAKRAVARTI_API_URL": url})
    assert raised.value.exit_code == EXIT_USER_ERROR


@pytest.mark.parametrize("timeout", ["0", "-1", "soon", "inf", "nan"])
def test_a_timeout_that_is_not_a_positive_number_is_refused(timeout: str) -> None:
    with pytest.raises(ConfigError, match="CHAKRAVARTI_TIMEOUT must be a positive number"):
        Settings.from_env({"CHAKRAVARTI_TIMEOUT": timeout})


def test_the_token_comes_from_the_environment() -> None:
    assert token_from_environment({"CHAKRAVARTI_TOKEN": " abc "}) == "abc"
    assert token_from_environment({"CHAKRAVARTI_TOKEN": "  "}) is None
    assert token_from_environment({}) is None


def test_the_first_provider_with_a_token_wins() -> None:
    asked: list[str] = []

    def keyring() -> str | None:
        asked.append("keyring")
        return None

    def environment() -> str | None:
        asked.append("environment")
        return "from-env"

    def never() -> str | None:
        raise AssertionError("asked after a token was found")

    assert resolve_token([keyring, environment, never]) == "from-env"
    assert asked == ["keyring", "environment"]


def test_without_a_token_the_error_says_how_to_get_one() -> None:
    with pytest.raises(ConfigError) as raised:
        resolve_token([lambda: None])
    error = raised.value
    assert error.code == "not_authenticated"
    assert error.exit_code == EXIT_USER_ERROR
    assert error.hint is not None
    assert "CHAKRAVARTI_TOKEN" in error.hint
    assert "ckrv cloud login" in error.hint
