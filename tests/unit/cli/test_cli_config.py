"""Settings from the environment; the bearer token's chain is in test_cli_login_tokens."""

from __future__ import annotations

import pytest

from ckrv.cli.config import (
    DEFAULT_API_URL,
    DEFAULT_TIMEOUT_SECONDS,
    Settings,
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
    assert (settings.api_url, settings.timeout) == ("https://api.ckrv.dev/v1", 2.5)
    assert settings.api_url_variable == "CHAKRAVARTI_API_URL"


def test_ckrv_api_url_wins_over_the_open_source_clients_variable() -> None:
    settings = Settings.from_env(
        {"CKRV_API_URL": "https://a.example/v1", "CHAKRAVARTI_API_URL": "https://b.example/v1"}
    )
    assert (settings.api_url, settings.api_url_variable) == ("https://a.example/v1", "CKRV_API_URL")
    with pytest.raises(ConfigError, match="CKRV_API_URL must be an http"):
        Settings.from_env({"CKRV_API_URL": "nowhere"})


def test_client_id_and_profile() -> None:
    assert (Settings.from_env({}).client_id, Settings.from_env({}).profile) == (
        "ckrv-cli",
        "default",
    )
    env = {"CHAKRAVARTI_CLIENT_ID": "ckrv-ci", "CKRV_PROFILE": "work"}
    assert (Settings.from_env(env).client_id, Settings.from_env(env).profile) == ("ckrv-ci", "work")
    assert Settings.from_env(env, profile="home").profile == "home"
    with pytest.raises(ConfigError, match="is not a profile name"):
        Settings.from_env({"CKRV_PROFILE": "../etc"})


def test_blank_variables_fall_back_to_the_defaults() -> None:
    settings = Settings.from_env(
        {"CKRV_API_URL": " ", "CHAKRAVARTI_API_URL": "  ", "CHAKRAVARTI_TIMEOUT": ""}
    )
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
