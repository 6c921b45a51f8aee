"""`ckrv cloud login | whoami | logout` keeping the login in a real system keyring, run without
a terminal as a script or a cron job runs them.

The keyring is gnome-keyring's Secret Service on a private bus (`tests/secret_service.py`).
Unlocked, the login is one secret there and no file. Locked, ckrv refuses at once with a
hint, writes nothing, and never asks the Secret Service to unlock (which would open a dialog
on the desktop): `dbus-monitor` shows no Unlock and no Prompt. With
CKRV_CREDENTIAL_STORE=file it logs in beside the locked keyring without calling it.

The gateway is one of this module's own that lets the CLI poll every second, so a login
waits a second for its approval, not five.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from uuid import uuid4

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from ckrv.cli.credentials import KEYRING_SERVICE, StoredLogin
from ckrv.schemas.api import SubscriptionTier
from ckrv.services.common.db import session_factory
from ckrv.services.gateway.identity.administration import create_user
from ckrv.services.gateway.identity.flows import decide_device_authorization
from ckrv.services.gateway.identity.tables import DeviceAuthorization
from ckrv.services.stack.nats_server import NatsServer
from ckrv.services.stack.postgres_server import PostgresServer
from tests.cli_runs import CKRV, Completed, run_ckrv
from tests.running_gateway import RunningGateway, started_gateway
from tests.secret_service import SECRETS_NAME, SecretService, running_secret_service

pytestmark = pytest.mark.integration

PASSWORD = "the desktop session password"
USER_CODE = re.compile(r"\b([B-DF-HJ-NP-TV-XZ]{4}-[2-9]{4})\b")
LOCKED_MESSAGE = (
    "the system keyring is locked, and ckrv does not ask to unlock it when it runs without "
    "a terminal"
)
LOCKED_HINT = (
    "Unlock the keyring (log in to the desktop session), set CKRV_TOKEN to an API token, "
    "or use CKRV_CREDENTIAL_STORE=file and log in again."
)
# The variables of the machine running the tests that would lead ckrv to another keyring,
# another home, a browser or another API.
NOT_INHERITED = ("HOME", "DISPLAY", "WAYLAND_DISPLAY", "BROWSER", "PYTHON_KEYRING_BACKEND")
NOT_INHERITED_PREFIXES = ("CKRV_", "CHAKRAVARTI_", "XDG_", "DBUS_")


@dataclass
class Desktop:
    """A user's machine: its keyring, its home folder, and `ckrv` run there without a terminal."""

    gateway: RunningGateway
    database: AsyncEngine
    keyring: SecretService

    def environment(self, store: str | None) -> dict[str, str]:
        inherited = {
            name: value
            for name, value in os.environ.items()
            if name not in NOT_INHERITED and not name.startswith(NOT_INHERITED_PREFIXES)
        }
        chosen = {"CKRV_CREDENTIAL_STORE": store} if store else {}
        return (
            inherited | self.keyring.environment() | {"CKRV_API_URL": self.gateway.api_url} | chosen
        )

    def ckrv(self, *args: str, store: str | None = None) -> Completed:
        """`ckrv cloud ARGS`, stdin not a terminal."""
        return run_ckrv(["cloud", *args], env=self.environment(store))

    async def login(self, email: str, *, store: str | None = None) -> Completed:
        """`ckrv cloud login --no-browser --json`, approved for a new user `email` meanwhile."""
        login = subprocess.Popen(
            [*CKRV, "cloud", "login", "--no-browser", "--json"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.environment(store),
            text=True,
        )
        try:
            assert login.stderr is not None
            # Under --json the code is shown on stderr; stdout is for the result.
            shown = ""
            for line in login.stderr:
                shown += line
                if found := USER_CODE.search(line):
                    await self._approve(found.group(1), email)
                    break
            stdout, stderr = login.communicate(timeout=60)
        finally:
            if login.poll() is None:
                login.kill()
                login.wait()
        return Completed(login.returncode, stdout, shown + stderr)

    async def device_authorizations(self) -> int:
        """How many device flows the gateway has started, for anyone."""
        async with session_factory(self.database)() as session:
            count = await session.scalar(select(func.count()).select_from(DeviceAuthorization))
        assert count is not None
        return count

    def stored_logins(self) -> list[StoredLogin]:
        return [
            StoredLogin.from_json(secret)
            for secret in self.keyring.secrets({"service": KEYRING_SERVICE, "username": "default"})
        ]

    def credential_files(self) -> list[str]:
        return [path for path in self.keyring.files() if path.startswith(".config/ckrv/")]

    async def _approve(self, user_code: str, email: str) -> None:
        async with session_factory(self.database)() as session, session.begin():
            user, _ = await create_user(session, email, SubscriptionTier.FREE)
            assert await decide_device_authorization(session, user_code, user.id, approve=True)


def new_email() -> str:
    return f"keyring-{uuid4().hex[:12]}@example.com"


@pytest.fixture(scope="module")
async def quick_gateway(
    nats_server: NatsServer, postgres_server: PostgresServer, gateway: RunningGateway
) -> AsyncIterator[RunningGateway]:
    """A gateway asking the CLI to poll every second (the session's `gateway` made the schema)."""
    async with started_gateway(
        nats_url=nats_server.url,
        database_url=postgres_server.dsn,
        switches={"CKRV_GATEWAY_POLL_INTERVAL_SECONDS": "1"},
    ) as running:
        yield running


@pytest.fixture
def desktop(quick_gateway: RunningGateway, database: AsyncEngine) -> Iterator[Desktop]:
    with running_secret_service(PASSWORD) as keyring:
        yield Desktop(quick_gateway, database, keyring)


async def test_an_unlocked_keyring_keeps_the_login(desktop: Desktop) -> None:
    email = new_email()

    logged_in = await desktop.login(email)

    assert logged_in.exit_code == 0, logged_in.stderr
    assert logged_in.json()["credential_store"] == "keyring"
    assert logged_in.json()["user"]["email"] == email
    (stored,) = desktop.stored_logins()
    assert (stored.email, stored.api_url) == (email, desktop.gateway.api_url)
    assert desktop.credential_files() == []

    whoami = desktop.ckrv("whoami", "--json")
    assert whoami.exit_code == 0, whoami.stderr
    assert whoami.json()["email"] == email

    logged_out = desktop.ckrv("logout", "--json")
    assert logged_out.exit_code == 0, logged_out.stderr
    assert logged_out.json() == {"profile": "default", "logged_out": True, "revoked": True}
    assert desktop.stored_logins() == []


async def test_a_locked_keyring_is_refused_without_asking_to_unlock_it(desktop: Desktop) -> None:
    assert (await desktop.login(new_email())).exit_code == 0
    desktop.keyring.lock()  # the screen locks; a cron job runs on
    files = desktop.keyring.files()
    device_authorizations = await desktop.device_authorizations()

    with desktop.keyring.recording() as bus:
        refused = [
            desktop.ckrv("login", "--no-browser", "--json"),
            desktop.ckrv("whoami", "--json"),
            desktop.ckrv("logout", "--json"),
        ]

    for run in refused:
        assert run.exit_code == 1, run
        assert run.stdout == ""
        assert run.error() == {
            "error": "credential_store_error",
            "message": LOCKED_MESSAGE,
            "hint": LOCKED_HINT,
        }
    # The login stopped before starting a device flow: no code shown, none made.
    assert await desktop.device_authorizations() == device_authorizations
    assert desktop.keyring.files() == files
    assert desktop.keyring.is_locked()
    # ckrv looked at the keyring, and only looked.
    assert bus.to(SECRETS_NAME)
    assert bus.of("org.freedesktop.Secret.Service", "Unlock") == []
    assert bus.of("org.freedesktop.Secret.Prompt", "Prompt") == []


async def test_the_file_store_logs_in_beside_a_locked_keyring(desktop: Desktop) -> None:
    desktop.keyring.lock()
    keyring_files = {
        path: data for path, data in desktop.keyring.files().items() if "keyrings" in path
    }
    email = new_email()

    with desktop.keyring.recording() as bus:
        logged_in = await desktop.login(email, store="file")
        whoami = desktop.ckrv("whoami", "--json", store="file")

    assert logged_in.exit_code == 0, logged_in.stderr
    assert logged_in.json()["credential_store"] == "file"
    assert whoami.exit_code == 0, whoami.stderr
    assert whoami.json()["email"] == email
    assert desktop.credential_files() == [".config/ckrv/credentials-default.enc"]
    assert {
        path: data for path, data in desktop.keyring.files().items() if "keyrings" in path
    } == keyring_files
    assert bus.to(SECRETS_NAME) == []
    assert bus.of("org.freedesktop.Secret.Service", "Unlock") == []
