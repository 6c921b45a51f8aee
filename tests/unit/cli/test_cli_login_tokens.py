"""Which bearer token a command sends: API token, then the stored login (refreshed), then none."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ckrv.cli.client import refresh_login
from ckrv.cli.config import (
    LoginToken,
    Settings,
    StaticToken,
    resolve_token,
    token_from_environment,
)
from ckrv.cli.credentials import EncryptedFileStore, StoredLogin
from ckrv.cli.errors import EXIT_USER_ERROR, ConfigError
from tests.unit.cli.bodies import (
    access_token,
    error_body,
    oauth_error,
    stored_login,
    token_body,
)
from tests.unit.cli.conftest import CliRunner
from tests.unit.cli.contract_server import ContractServer, Reply

NO_JOBS: dict[str, Any] = {"jobs": [], "next_cursor": None}


def bearers(service: ContractServer, method: str, path: str) -> list[str]:
    return [r.headers.get("authorization", "") for r in service.requests_to(method, path)]


def refresh_tokens_sent(service: ContractServer) -> list[str]:
    return [r.body["refresh_token"] for r in service.requests_to("POST", "/auth/refresh")]


# The order of the chain


def test_providers_are_asked_in_order_until_one_has_a_token() -> None:
    asked: list[str] = []

    def environment() -> StaticToken | None:
        asked.append("environment")
        return None

    def login() -> StaticToken | None:
        asked.append("login")
        return StaticToken("from-login", "login")

    def never() -> StaticToken | None:
        raise AssertionError("asked after a token was found")

    assert resolve_token([environment, login, never]).value() == "from-login"
    assert asked == ["environment", "login"]


def test_without_a_token_the_error_says_how_to_log_in() -> None:
    with pytest.raises(ConfigError) as raised:
        resolve_token([lambda: None])
    error = raised.value
    assert error.message == "not logged in: run `ckrv cloud login` or set CKRV_TOKEN"
    assert (error.code, error.exit_code) == ("not_authenticated", EXIT_USER_ERROR)
    with pytest.raises(ConfigError) as raised:
        resolve_token([lambda: None], "work")
    assert raised.value.message == (
        "not logged in (profile 'work'): run `ckrv --profile work cloud login` or set CKRV_TOKEN"
    )


def test_the_api_token_variables() -> None:
    both = {"CKRV_TOKEN": " ckrv ", "CHAKRAVARTI_TOKEN": "chakravarti"}
    assert token_from_environment(both) == StaticToken("ckrv", "CKRV_TOKEN")
    assert token_from_environment({"CKRV_TOKEN": " ", "CHAKRAVARTI_TOKEN": "c"}) == StaticToken(
        "c", "CHAKRAVARTI_TOKEN"
    )
    assert token_from_environment({"CKRV_TOKEN": "  "}) is None
    assert token_from_environment({}) is None


def test_the_api_token_wins_and_the_store_is_not_even_opened(
    ckrv: CliRunner,
    service: ContractServer,
    credentials: EncryptedFileStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    credentials.save("default", stored_login(service.api_url))
    monkeypatch.setenv("CKRV_TOKEN", "api-token")
    monkeypatch.setenv("CHAKRAVARTI_TOKEN", "older-api-token")
    # A store that cannot even be opened: the chain must stop before it.
    monkeypatch.setenv("CKRV_CREDENTIAL_STORE", "vault")
    service.reply("GET", "/jobs", Reply(200, NO_JOBS))
    result = ckrv("jobs", "-q")
    assert result.exit_code == 0, result.stderr
    assert bearers(service, "GET", "/jobs") == ["Bearer api-token"]


def test_the_stored_login_is_used_when_there_is_no_api_token(
    ckrv: CliRunner, service: ContractServer, credentials: EncryptedFileStore
) -> None:
    credentials.save("default", stored_login(service.api_url))
    service.reply("GET", "/jobs", Reply(200, NO_JOBS))
    assert ckrv("jobs", "-q").exit_code == 0
    assert bearers(service, "GET", "/jobs") == [f"Bearer {access_token(1)}"]
    assert service.requests_to("POST", "/auth/refresh") == []


def test_without_an_api_url_the_profile_goes_where_it_logged_in(
    ckrv: CliRunner,
    service: ContractServer,
    credentials: EncryptedFileStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    credentials.save("work", stored_login(service.api_url))
    monkeypatch.delenv("CKRV_API_URL")
    service.reply("GET", "/jobs", Reply(200, NO_JOBS))
    assert ckrv("--profile", "work", "jobs", "-q").exit_code == 0
    assert bearers(service, "GET", "/jobs") == [f"Bearer {access_token(1)}"]


def test_a_login_is_not_sent_to_another_api(
    ckrv: CliRunner,
    service: ContractServer,
    credentials: EncryptedFileStore,
) -> None:
    credentials.save("default", stored_login("https://api.ckrv.dev/v1"))
    result = ckrv("jobs")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == (
        f"Error: profile 'default' is logged in to https://api.ckrv.dev/v1, "
        f"not to {service.api_url} (CKRV_API_URL)"
    )
    assert service.received == []


def test_profiles_keep_their_own_logins(
    ckrv: CliRunner,
    service: ContractServer,
    credentials: EncryptedFileStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    credentials.save("default", stored_login(service.api_url, 1))
    credentials.save("work", stored_login(service.api_url, 2))
    service.reply("GET", "/jobs", Reply(200, NO_JOBS))
    assert ckrv("jobs", "-q", "--profile", "work").exit_code == 0
    monkeypatch.setenv("CKRV_PROFILE", "work")
    assert ckrv("jobs", "-q").exit_code == 0
    assert ckrv("--profile", "default", "jobs", "-q").exit_code == 0
    assert bearers(service, "GET", "/jobs") == [
        f"Bearer {access_token(2)}",
        f"Bearer {access_token(2)}",
        f"Bearer {access_token(1)}",
    ]


# Silent refresh


def test_an_access_token_about_to_expire_is_refreshed_and_the_new_refresh_token_kept(
    ckrv: CliRunner, service: ContractServer, credentials: EncryptedFileStore
) -> None:
    credentials.save("default", stored_login(service.api_url, 1, expires_in=59))
    service.reply("POST", "/auth/refresh", Reply(200, token_body(2)))
    service.reply("GET", "/jobs", Reply(200, NO_JOBS))
    started = datetime.now(UTC)
    assert ckrv("jobs", "-q").exit_code == 0
    (refresh,) = service.requests_to("POST", "/auth/refresh")
    assert refresh.body == {
        "grant_type": "refresh_token",
        "refresh_token": "refresh-1",
        "client_id": "ckrv-cli",
    }
    assert "authorization" not in refresh.headers
    assert bearers(service, "GET", "/jobs") == [f"Bearer {access_token(2)}"]
    login = credentials.load("default")
    assert login is not None
    assert (login.access_token, login.refresh_token) == (access_token(2), "refresh-2")
    assert started + timedelta(seconds=899) <= login.access_token_expires_at
    assert login.access_token_expires_at <= datetime.now(UTC) + timedelta(seconds=900)


def test_each_refresh_spends_the_refresh_token_the_last_one_gave(
    ckrv: CliRunner, service: ContractServer, credentials: EncryptedFileStore
) -> None:
    credentials.save("default", stored_login(service.api_url, 1, expires_in=0))
    service.reply(
        "POST",
        "/auth/refresh",
        Reply(200, token_body(2, expires_in=30)),
        Reply(200, token_body(3, expires_in=30)),
    )
    service.reply("GET", "/jobs", Reply(200, NO_JOBS))
    for _ in range(2):
        assert ckrv("jobs", "-q").exit_code == 0
    assert refresh_tokens_sent(service) == ["refresh-1", "refresh-2"]
    assert bearers(service, "GET", "/jobs") == [
        f"Bearer {access_token(2)}",
        f"Bearer {access_token(3)}",
    ]


def test_a_token_with_more_than_a_minute_left_is_not_refreshed(
    ckrv: CliRunner, service: ContractServer, credentials: EncryptedFileStore
) -> None:
    credentials.save("default", stored_login(service.api_url, 1, expires_in=90))
    service.reply("GET", "/jobs", Reply(200, NO_JOBS))
    assert ckrv("jobs", "-q").exit_code == 0
    assert service.requests_to("POST", "/auth/refresh") == []


def test_a_refused_refresh_token_ends_the_session(
    ckrv: CliRunner, service: ContractServer, credentials: EncryptedFileStore
) -> None:
    credentials.save("default", stored_login(service.api_url, 1, expires_in=10))
    service.reply("POST", "/auth/refresh", Reply(400, oauth_error("invalid_grant")))
    result = ckrv("jobs")
    assert result.exit_code == 1
    assert result.stderr == "Error: your session has ended; run `ckrv cloud login`\n"
    assert service.requests_to("GET", "/jobs") == []
    assert credentials.load("default") is None
    assert ckrv("jobs").stderr.startswith("Error: not logged in")


def test_a_service_out_of_reach_does_not_stop_a_token_that_still_works(
    ckrv: CliRunner, service: ContractServer, credentials: EncryptedFileStore
) -> None:
    credentials.save("default", stored_login(service.api_url, 1, expires_in=30))
    service.reply("POST", "/auth/refresh", Reply(503, text="overloaded"))
    service.reply("GET", "/jobs", Reply(200, NO_JOBS))
    assert ckrv("jobs", "-q").exit_code == 0
    assert bearers(service, "GET", "/jobs") == [f"Bearer {access_token(1)}"]
    login = credentials.load("default")
    assert login is not None
    assert login.refresh_token == "refresh-1"


def test_an_expired_token_needs_the_refresh_to_succeed(
    ckrv: CliRunner, service: ContractServer, credentials: EncryptedFileStore
) -> None:
    credentials.save("default", stored_login(service.api_url, 1, expires_in=-5))
    service.reply("POST", "/auth/refresh", Reply(503, text="overloaded"))
    result = ckrv("jobs")
    assert result.exit_code == 2
    assert "/auth/refresh answered HTTP 503" in result.stderr
    assert service.requests_to("GET", "/jobs") == []


# A refused access token


def test_a_refused_access_token_is_refreshed_and_the_request_sent_again_once(
    ckrv: CliRunner, service: ContractServer, credentials: EncryptedFileStore
) -> None:
    credentials.save("default", stored_login(service.api_url, 1))
    service.reply(
        "GET",
        "/jobs",
        Reply(401, error_body("unauthorized", "token revoked")),
        Reply(200, NO_JOBS),
    )
    service.reply("POST", "/auth/refresh", Reply(200, token_body(2)))
    result = ckrv("jobs", "-q")
    assert result.exit_code == 0, result.stderr
    assert bearers(service, "GET", "/jobs") == [
        f"Bearer {access_token(1)}",
        f"Bearer {access_token(2)}",
    ]
    assert refresh_tokens_sent(service) == ["refresh-1"]
    login = credentials.load("default")
    assert login is not None
    assert login.refresh_token == "refresh-2"


def test_a_token_refused_again_after_the_refresh_is_an_error(
    ckrv: CliRunner, service: ContractServer, credentials: EncryptedFileStore
) -> None:
    credentials.save("default", stored_login(service.api_url, 1))
    service.reply("GET", "/jobs", Reply(401, error_body("unauthorized", "no such user")))
    service.reply("POST", "/auth/refresh", Reply(200, token_body(2)))
    result = ckrv("jobs")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: no such user\n")
    assert len(service.requests_to("GET", "/jobs")) == 2
    assert len(service.requests_to("POST", "/auth/refresh")) == 1


def test_a_refused_api_token_is_not_refreshed(
    ckrv: CliRunner,
    service: ContractServer,
    credentials: EncryptedFileStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    credentials.save("default", stored_login(service.api_url, 1))
    monkeypatch.setenv("CKRV_TOKEN", "revoked-api-token")
    service.reply("GET", "/jobs", Reply(401, error_body("unauthorized", "token revoked")))
    result = ckrv("jobs")
    assert result.exit_code == 1
    assert "Check CKRV_TOKEN" in result.stderr
    assert len(service.requests_to("GET", "/jobs")) == 1
    assert service.requests_to("POST", "/auth/refresh") == []


# Two ckrv processes at once


def fail_refresh(settings: Settings, login: StoredLogin) -> StoredLogin:
    raise AssertionError("refreshed although another ckrv had just done it")


def test_a_token_another_ckrv_refreshed_meanwhile_is_taken_as_it_is(
    service: ContractServer, credentials: EncryptedFileStore
) -> None:
    settings = Settings(service.api_url, timeout=5)
    mine = stored_login(service.api_url, 1)
    token = LoginToken(settings, credentials, mine, fail_refresh)
    credentials.save("default", stored_login(service.api_url, 2))  # the other ckrv's work
    assert token.renew(rejected=access_token(1)) == access_token(2)


def test_two_ckrv_refreshing_at_once_spend_the_refresh_token_once(
    service: ContractServer, credentials: EncryptedFileStore
) -> None:
    settings = Settings(service.api_url, timeout=5)
    credentials.save("default", stored_login(service.api_url, 1, expires_in=5))
    service.reply("POST", "/auth/refresh", Reply(200, token_body(2), delay=0.2))
    tokens = [
        LoginToken(settings, credentials, stored_login(service.api_url, 1, expires_in=5), refresh)
        for refresh in (refresh_login, refresh_login)
    ]
    values: list[str] = []
    threads = [threading.Thread(target=lambda t=t: values.append(t.value())) for t in tokens]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert values == [access_token(2), access_token(2)]
    assert refresh_tokens_sent(service) == ["refresh-1"]
