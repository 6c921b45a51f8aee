"""`ckrv cloud login`, `logout` and `whoami` against the contract server's scripted device flow."""

from __future__ import annotations

import itertools
import json
import shlex
import socket
import sys
import webbrowser
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import keyring
import keyring.core
import pytest

from ckrv.cli import device_flow
from ckrv.cli.client import CloudClient
from ckrv.cli.commands.cloud import can_open_browser
from ckrv.cli.config import Settings
from ckrv.cli.credentials import EncryptedFileStore
from ckrv.cli.device_flow import DeviceFlowError, wait_for_tokens
from ckrv.cli.errors import CloudError
from ckrv.cli.models import DeviceAuthorization
from tests.unit.cli.bodies import (
    DEVICE_CODE,
    EMAIL,
    USER_CODE,
    VERIFICATION_URI,
    access_token,
    device_body,
    oauth_error,
    stored_login,
    token_body,
    user_body,
)
from tests.unit.cli.conftest import CliRunner
from tests.unit.cli.contract_server import ContractServer, Received, Reply
from tests.unit.cli.test_cli_credentials import MemoryKeyring

INTERVAL = 0.05
SLOW_DOWN = 0.2
PENDING = Reply(400, oauth_error("authorization_pending"))
SLOW_DOWN_REPLY = Reply(400, oauth_error("slow_down"))
TOKENS = Reply(200, token_body(1))


@pytest.fixture(autouse=True)
def short_slow_down(monkeypatch: pytest.MonkeyPatch) -> None:
    """`slow_down` adds 0.2 s instead of RFC 8628's 5 s, so a flow lasts well under a second."""
    monkeypatch.setattr(device_flow, "SLOW_DOWN_SECONDS", SLOW_DOWN)


def gaps(requests: list[Received]) -> list[float]:
    return [later.at - earlier.at for earlier, later in itertools.pairwise(requests)]


# Login


def test_login_shows_the_code_waits_for_approval_and_stores_the_tokens(
    ckrv: CliRunner, service: ContractServer, credentials: EncryptedFileStore
) -> None:
    service.device_flow(PENDING, SLOW_DOWN_REPLY, PENDING, TOKENS, interval=INTERVAL, expires_in=30)
    service.reply("GET", "/users/me", Reply(200, user_body()))
    started = datetime.now(UTC)
    result = ckrv("cloud", "login", "--no-browser")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f"    {VERIFICATION_URI}" in lines
    assert f"    {USER_CODE}" in lines
    assert f"Or open {VERIFICATION_URI}?user_code={USER_CODE}, which fills the code in." in lines
    assert lines[-1] == f"Logged in as {EMAIL} (pro tier, 97 jobs left this cycle)"
    assert result.stderr == "Waiting for approval…\n"

    (device,) = service.requests_to("POST", "/auth/device")
    assert device.body == {"client_id": "ckrv-cli"}
    polls = service.requests_to("POST", "/auth/token")
    assert [poll.body for poll in polls] == [
        {
            "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
            "device_code": DEVICE_CODE,
            "client_id": "ckrv-cli",
        }
    ] * 4
    assert all("authorization" not in r.headers for r in [device, *polls])
    first, second, after_slow_down = gaps(polls)
    assert min(first, second) >= INTERVAL
    assert after_slow_down >= INTERVAL + SLOW_DOWN
    (me,) = service.requests_to("GET", "/users/me")
    assert me.headers["authorization"] == f"Bearer {access_token(1)}"

    login = credentials.load("default")
    assert login is not None
    assert (login.api_url, login.access_token, login.refresh_token, login.email) == (
        service.api_url,
        access_token(1),
        "refresh-1",
        EMAIL,
    )
    assert started + timedelta(seconds=900) <= login.access_token_expires_at
    assert login.access_token_expires_at <= datetime.now(UTC) + timedelta(seconds=900)


def test_login_under_json_keeps_stdout_for_the_result(
    ckrv: CliRunner, service: ContractServer
) -> None:
    service.device_flow(TOKENS, interval=INTERVAL, expires_in=30)
    service.reply("GET", "/users/me", Reply(200, user_body(job_quota_remaining=1)))
    result = ckrv("cloud", "login", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == {
        "profile": "default",
        "api_url": service.api_url,
        "credential_store": "file",
        "user": user_body(job_quota_remaining=1),
    }
    assert USER_CODE in result.stderr


def test_login_to_a_profile_leaves_the_others_alone(
    ckrv: CliRunner, service: ContractServer, credentials: EncryptedFileStore
) -> None:
    credentials.save("default", stored_login(service.api_url, 7))
    service.device_flow(TOKENS, interval=INTERVAL, expires_in=30)
    service.reply("GET", "/users/me", Reply(200, user_body(job_quota_remaining=1)))
    result = ckrv("cloud", "login", "--profile", "work", "-q")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[-1] == EMAIL
    work, default = credentials.load("work"), credentials.load("default")
    assert work is not None
    assert default is not None
    assert (work.refresh_token, default.refresh_token) == ("refresh-1", "refresh-7")
    assert ckrv("--profile", "work", "cloud", "whoami").stdout.startswith(
        f"Logged in as {EMAIL} (pro tier, 1 job left this cycle)\n"
    )


def test_login_denied_in_the_browser_stores_nothing(
    ckrv: CliRunner, service: ContractServer, credentials: EncryptedFileStore
) -> None:
    service.device_flow(
        PENDING, Reply(400, oauth_error("access_denied")), interval=INTERVAL, expires_in=30
    )
    result = ckrv("cloud", "login", "--no-browser")
    assert result.exit_code == 1
    assert result.stderr.endswith("Error: the request was denied in the browser\n")
    assert credentials.load("default") is None
    assert not credentials.directory.exists()
    assert service.requests_to("GET", "/users/me") == []


def test_login_with_a_code_the_service_calls_expired_stores_nothing(
    ckrv: CliRunner, service: ContractServer, credentials: EncryptedFileStore
) -> None:
    service.device_flow(
        PENDING, Reply(400, oauth_error("expired_token")), interval=INTERVAL, expires_in=30
    )
    result = ckrv("cloud", "login", "--no-browser")
    assert result.exit_code == 1
    assert result.stderr.endswith("Error: the code expired; run `ckrv cloud login` again\n")
    assert credentials.load("default") is None


def test_login_stops_polling_when_the_code_expires(
    ckrv: CliRunner, service: ContractServer, credentials: EncryptedFileStore
) -> None:
    service.device_flow(PENDING, interval=INTERVAL, expires_in=0.3)
    result = ckrv("--profile", "work", "cloud", "login", "--no-browser")
    assert result.exit_code == 1
    assert result.stderr.endswith(
        "Error: the code expired; run `ckrv --profile work cloud login` again\n"
    )
    assert 3 <= len(service.requests_to("POST", "/auth/token")) <= 6
    assert credentials.load("work") is None


def test_login_keeps_polling_through_a_passing_server_error(
    ckrv: CliRunner, service: ContractServer
) -> None:
    service.device_flow(
        PENDING, Reply(503, text="restarting"), TOKENS, interval=INTERVAL, expires_in=30
    )
    service.reply("GET", "/users/me", Reply(200, user_body()))
    assert ckrv("cloud", "login").exit_code == 0
    assert len(service.requests_to("POST", "/auth/token")) == 3


def test_login_says_when_an_api_token_will_still_win(
    ckrv: CliRunner, service: ContractServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CKRV_TOKEN", "api-token")
    service.device_flow(TOKENS, interval=INTERVAL, expires_in=30)
    service.reply("GET", "/users/me", Reply(200, user_body()))
    result = ckrv("cloud", "login")
    assert result.exit_code == 0
    assert "Warning: CKRV_TOKEN is set, and commands use it instead of this login" in result.stderr


@pytest.fixture
def memory_keyring() -> Iterator[MemoryKeyring]:
    backend = MemoryKeyring()
    keyring.set_keyring(backend)
    yield backend
    keyring.core.init_backend()


def test_login_goes_to_the_keyring_when_there_is_one(
    ckrv: CliRunner,
    service: ContractServer,
    credentials: EncryptedFileStore,
    memory_keyring: MemoryKeyring,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CKRV_CREDENTIAL_STORE")
    service.device_flow(TOKENS, interval=INTERVAL, expires_in=30)
    service.reply("GET", "/users/me", Reply(200, user_body()))
    assert ckrv("cloud", "login").exit_code == 0
    assert list(memory_keyring.secrets) == [("ckrv-cloud", "default")]
    assert not credentials.directory.exists()
    assert ckrv("cloud", "whoami", "-q").stdout == f"{EMAIL}\n"
    service.reply("POST", "/auth/revoke", Reply(200, {}))
    assert ckrv("cloud", "logout").exit_code == 0
    assert memory_keyring.secrets == {}


# The polling rules, with the waits recorded instead of slept


class RecordedTime:
    """A clock that moves only when the poller waits, and remembers each wait."""

    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float] = []

    def wait(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


def device(**overrides: object) -> DeviceAuthorization:
    return DeviceAuthorization.from_body(device_body(**overrides))


def test_slow_down_adds_five_seconds_to_every_later_interval(
    service: ContractServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.undo()  # RFC 8628's own 5 s
    service.reply("POST", "/auth/token", PENDING, SLOW_DOWN_REPLY, PENDING, SLOW_DOWN_REPLY, TOKENS)
    time = RecordedTime()
    with CloudClient(Settings(service.api_url, timeout=5), None) as client:
        tokens = wait_for_tokens(client, device(interval=5), wait=time.wait, clock=time.clock)
    assert tokens.access_token == access_token(1)
    assert time.waits == [5, 5, 10, 10, 15]


def test_without_an_interval_polls_are_five_seconds_apart(service: ContractServer) -> None:
    service.reply("POST", "/auth/token", PENDING, TOKENS)
    time = RecordedTime()
    with CloudClient(Settings(service.api_url, timeout=5), None) as client:
        wait_for_tokens(client, device(interval=None), wait=time.wait, clock=time.clock)
    assert time.waits == [5, 5]


def test_polling_ends_when_the_next_poll_would_come_after_expiry(service: ContractServer) -> None:
    service.reply("POST", "/auth/token", PENDING)
    time = RecordedTime()
    with (
        CloudClient(Settings(service.api_url, timeout=5), None) as client,
        pytest.raises(DeviceFlowError, match="the code expired") as raised,
    ):
        wait_for_tokens(client, device(interval=5, expires_in=12), wait=time.wait, clock=time.clock)
    assert raised.value.code == "expired_token"
    assert time.waits == [5, 5]
    assert len(service.requests_to("POST", "/auth/token")) == 2


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_polling_gives_up_after_three_polls_in_a_row_without_an_answer() -> None:
    time = RecordedTime()
    settings = Settings(f"http://127.0.0.1:{closed_port()}/v1", timeout=5)
    with CloudClient(settings, None) as client, pytest.raises(CloudError) as raised:
        wait_for_tokens(client, device(interval=1), wait=time.wait, clock=time.clock)
    assert raised.value.code == "unreachable"
    assert time.waits == [1, 1, 1]


@pytest.mark.parametrize(
    ("env", "platform", "expected"),
    [
        ({}, "linux", False),
        ({"SSH_CONNECTION": "1.2.3.4 5 6.7.8.9 22"}, "linux", False),
        ({"DISPLAY": ":0"}, "linux", True),
        ({"WAYLAND_DISPLAY": "wayland-0"}, "linux", True),
        ({"BROWSER": "firefox"}, "linux", True),
        ({}, "darwin", True),
        ({}, "win32", True),
    ],
)
def test_a_browser_opens_only_where_the_user_can_see_it(
    env: dict[str, str], platform: str, expected: bool
) -> None:
    assert can_open_browser(env, platform) is expected


# Logout


def test_logout_revokes_the_refresh_token_and_forgets_the_login(
    ckrv: CliRunner, service: ContractServer, credentials: EncryptedFileStore
) -> None:
    credentials.save("default", stored_login(service.api_url, 3))
    credentials.save("work", stored_login(service.api_url, 4))
    service.reply("POST", "/auth/revoke", Reply(200, {}))
    result = ckrv("cloud", "logout")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "Logged out.\n", "")
    (revoke,) = service.requests_to("POST", "/auth/revoke")
    assert revoke.body == {
        "token": "refresh-3",
        "token_type_hint": "refresh_token",
        "client_id": "ckrv-cli",
    }
    assert "authorization" not in revoke.headers
    assert credentials.load("default") is None
    assert credentials.load("work") is not None
    assert ckrv("cloud", "whoami").exit_code == 1


def test_logout_without_the_service_still_forgets_the_login_and_says_so(
    ckrv: CliRunner, credentials: EncryptedFileStore
) -> None:
    unreachable = f"http://127.0.0.1:{closed_port()}/v1"
    credentials.save("work", stored_login(unreachable))
    result = ckrv("cloud", "logout", "--profile", "work")
    assert result.exit_code == 0
    assert result.stdout == "Logged out (profile 'work').\n"
    assert result.stderr.startswith(f"Warning: could not end the session at {unreachable}")
    assert "it ends by itself when its refresh token expires" in result.stderr
    assert credentials.load("work") is None


def test_logout_removes_credentials_that_cannot_be_read(
    ckrv: CliRunner, service: ContractServer, credentials: EncryptedFileStore
) -> None:
    credentials.save("default", stored_login(service.api_url))
    credentials.path("default").write_bytes(b"CKRVCRED" + bytes(60))
    result = ckrv("cloud", "logout")
    assert result.exit_code == 0
    assert "cannot be read; removing them" in result.stderr
    assert not credentials.path("default").exists()
    assert service.received == []


def test_logout_when_not_logged_in(ckrv: CliRunner, service: ContractServer) -> None:
    result = ckrv("cloud", "logout")
    assert (result.exit_code, result.stdout) == (0, "Not logged in; nothing to do.\n")
    assert json.loads(ckrv("cloud", "logout", "--json").stdout) == {
        "profile": "default",
        "logged_out": False,
        "revoked": False,
    }
    assert service.received == []


# Whoami


def test_whoami_when_not_logged_in_says_how_to_log_in(
    ckrv: CliRunner, service: ContractServer
) -> None:
    result = ckrv("cloud", "whoami")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.splitlines()[0] == (
        "Error: not logged in: run `ckrv cloud login` or set CKRV_TOKEN"
    )
    error = json.loads(ckrv("cloud", "whoami", "--json").stderr)
    assert (error["error"], error["message"]) == (
        "not_authenticated",
        "not logged in: run `ckrv cloud login` or set CKRV_TOKEN",
    )
    assert service.received == []


def test_whoami_shows_the_account_plan_and_quota(
    ckrv: CliRunner, service: ContractServer, credentials: EncryptedFileStore
) -> None:
    credentials.save("default", stored_login(service.api_url))
    service.reply("GET", "/users/me", Reply(200, user_body()))
    result = ckrv("cloud", "whoami")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0] == f"Logged in as {EMAIL} (pro tier, 97 jobs left this cycle)"
    assert lines[-1] == f"Using profile 'default' at {service.api_url}."
    assert json.loads(ckrv("cloud", "whoami", "--json").stdout) == user_body()


def test_whoami_with_an_api_token_names_it(
    ckrv: CliRunner, service: ContractServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHAKRAVARTI_TOKEN", "api-token")
    service.reply("GET", "/users/me", Reply(200, user_body()))
    result = ckrv("cloud", "whoami")
    assert result.stdout.splitlines()[-1] == (
        f"Using the API token in CHAKRAVARTI_TOKEN at {service.api_url}."
    )


def test_where_a_browser_can_open_login_opens_the_page_with_the_code_filled_in(
    ckrv: CliRunner,
    service: ContractServer,
    credentials: EncryptedFileStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    opened = tmp_path / "opened"
    record = f"import sys; open({str(opened)!r}, 'w').write(sys.argv[1])"
    # The user's browser, as $BROWSER names it: a program given the address.
    monkeypatch.setenv("BROWSER", f"{sys.executable} -c {shlex.quote(record)} %s")
    monkeypatch.setattr(webbrowser, "_tryorder", None)  # read $BROWSER afresh
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)  # the user watches a terminal
    service.device_flow(TOKENS, interval=INTERVAL, expires_in=30)
    service.reply("GET", "/users/me", Reply(200, user_body()))

    result = ckrv("cloud", "login")

    assert result.exit_code == 0, result.stderr
    assert opened.read_text() == f"{VERIFICATION_URI}?user_code={USER_CODE}"
    assert "Opened your browser there." in result.stdout.splitlines()
    assert credentials.load("default") is not None
