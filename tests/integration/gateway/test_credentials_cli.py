"""`ckrv cloud credentials add | list | remove`, run as a user runs them, against the real gateway.

Each test is a fresh user whose API token the CLI gets through CHAKRAVARTI_TOKEN;
what was stored is checked by opening it as the dispatcher does.
"""

from __future__ import annotations

import json
import os
import pty
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.cli_runs import CKRV, Completed, run_ckrv, user_environment
from tests.integration.gateway.credentials import new_deploy_key, new_name, new_token, opened
from tests.running_gateway import RunningGateway

pytestmark = pytest.mark.integration

COMMAND = ["cloud", "credentials"]
PROMPT = b"Token (input hidden): "


@dataclass
class User:
    """A fresh user of the gateway, driving its credentials through the CLI."""

    gateway: RunningGateway
    workdir: Path
    email: str

    @property
    def environment(self) -> dict[str, str]:
        return user_environment(
            self.workdir / ".config",
            CHAKRAVARTI_API_URL=self.gateway.api_url,
            CHAKRAVARTI_TOKEN=self.gateway.token(self.email),
            CKRV_CREDENTIAL_STORE="file",
        )

    @property
    def id(self) -> UUID:
        me = httpx.get(
            f"{self.gateway.api_url}/users/me",
            headers={"Authorization": f"Bearer {self.gateway.token(self.email)}"},
        )
        return UUID(me.json()["id"])

    def credentials(self, *args: str, stdin: str | None = None) -> Completed:
        """`ckrv cloud credentials ARGS`; stdin is `stdin`, or empty (not a terminal)."""
        return run_ckrv([*COMMAND, *args], env=self.environment, stdin=stdin)

    def credentials_at_terminal(self, *args: str, typed: bytes) -> tuple[int, bytes]:
        """Run on a terminal of its own, type `typed` at the prompt; exit code and screen."""
        pid, terminal = pty.fork()
        if pid == 0:  # pragma: no cover - the child becomes the CLI
            os.execve(sys.executable, [*CKRV, *COMMAND, *args], self.environment)
        screen = b""
        try:
            while PROMPT not in screen and b"Error" not in screen:
                screen += os.read(terminal, 1024)
            if PROMPT in screen:
                os.write(terminal, typed)
            while chunk := _read_until_closed(terminal):
                screen += chunk
        finally:
            os.close(terminal)
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status), screen


def _read_until_closed(terminal: int) -> bytes:
    try:
        return os.read(terminal, 1024)
    except OSError:  # EIO: the child closed its side of the terminal
        return b""


@pytest.fixture
def user(gateway: RunningGateway, tmp_path: Path) -> User:
    return User(gateway, tmp_path, f"cli-credentials-{new_name()}@example.com")


async def test_add_reads_a_token_from_stdin(user: User, database: AsyncEngine) -> None:
    name, token = new_name(), new_token()

    added = user.credentials("add", "--name", name, "--provider", "gitlab", stdin=token + "\n")

    assert added.exit_code == 0, added.stderr
    assert f"Stored git credential '{name}' (gitlab token)." in added.stdout
    assert f"ckrv run --cloud SPEC --credential {name}" in added.stdout
    stored = await opened(database, user.id, name)
    assert stored is not None
    assert stored.value.get_secret_value() == token


async def test_add_reads_a_deploy_key_from_a_file(
    user: User, database: AsyncEngine, tmp_path: Path
) -> None:
    name, key = new_name(), new_deploy_key()
    key_file = tmp_path / "deploy_key"
    key_file.write_text(key)

    added = user.credentials(
        "add", "--name", name, "--provider", "github", "--type", "deploy_key",
        "--from-file", str(key_file), "--json",
    )  # fmt: skip

    assert added.exit_code == 0, added.stderr
    shown = json.loads(added.stdout)
    assert (shown["name"], shown["credential_type"]) == (name, "deploy_key")
    stored = await opened(database, user.id, name)
    assert stored is not None
    assert stored.value.get_secret_value() == key


def test_add_without_a_value_is_refused(user: User, tmp_path: Path) -> None:
    name = new_name()

    no_stdin = user.credentials("add", "--name", name, "--provider", "github")
    missing_file = user.credentials(
        "add", "--name", name, "--provider", "github", "--from-file", str(tmp_path / "nothing")
    )
    on_the_command_line = user.credentials("add", "--name", name, "--provider", "github", "tok")

    assert no_stdin.exit_code == 1
    assert "Error: no credential value: stdin gave nothing" in no_stdin.stderr
    assert "--from-file FILE" in no_stdin.stderr
    assert missing_file.exit_code == 1
    assert "No such file or directory" in missing_file.stderr
    assert on_the_command_line.exit_code == 1
    assert user.credentials("list", "--json").stdout.strip() == '{\n  "credentials": []\n}'


async def test_add_asks_for_a_token_on_a_terminal_without_echo(
    user: User, database: AsyncEngine
) -> None:
    name, token = new_name(), new_token()

    exit_code, screen = user.credentials_at_terminal(
        "add", "--name", name, "--provider", "bitbucket", typed=token.encode() + b"\n"
    )

    assert exit_code == 0, screen
    assert f"Stored git credential '{name}'".encode() in screen
    assert token.encode() not in screen
    stored = await opened(database, user.id, name)
    assert stored is not None
    assert stored.value.get_secret_value() == token


def test_a_deploy_key_is_not_typed_at_a_prompt(user: User) -> None:
    exit_code, screen = user.credentials_at_terminal(
        "add", "--name", new_name(), "--provider", "github", "--type", "deploy_key", typed=b""
    )
    assert exit_code == 1
    assert b"cannot be typed at a prompt" in screen
    assert b"--from-file" in screen


def test_list_and_remove(user: User) -> None:
    first, second = "aa-" + new_name(), "bb-" + new_name()
    for name in (second, first):
        assert (
            user.credentials("add", "--name", name, "--provider", "github", stdin="t").exit_code
            == 0
        )

    table = user.credentials("list")
    as_json: dict[str, Any] = json.loads(user.credentials("list", "--json").stdout)

    assert table.exit_code == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["NAME", "PROVIDER", "TYPE", "CREATED", "LAST", "USED"]
    assert [row.split()[:3] for row in rows] == [
        [first, "github", "pat"],
        [second, "github", "pat"],
    ]
    assert [row.split()[-1] for row in rows] == ["-", "-"]
    assert [credential["name"] for credential in as_json["credentials"]] == [first, second]

    removed = user.credentials("remove", first)
    assert (removed.exit_code, removed.stdout) == (0, f"Removed git credential '{first}'.\n")
    assert user.credentials("list", "-q").stdout == f"{second}\n"
    again = user.credentials("remove", first)
    assert again.exit_code == 1
    assert f"Error: credential '{first}' not found" in again.stderr


def test_the_service_refusal_is_explained_without_the_value(user: User) -> None:
    name, token = new_name(), new_token()
    assert (
        user.credentials("add", "--name", name, "--provider", "github", stdin=token).exit_code == 0
    )

    taken = user.credentials("add", "--name", name, "--provider", "github", stdin=token)
    not_a_key = user.credentials(
        "add", "--name", new_name(), "--provider", "github", "--type", "deploy_key", stdin=token
    )

    assert taken.exit_code == 1
    assert f"a credential named '{name}' exists already" in taken.stderr
    assert not_a_key.exit_code == 1
    assert "value: is not a private key" in not_a_key.stderr
    for refused in (taken, not_a_key):
        assert token not in refused.stdout + refused.stderr
