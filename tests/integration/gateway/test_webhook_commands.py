"""`ckrv webhooks ...`, run as a user runs it, against the session's gateway.

Each test is a fresh user whose API token the CLI gets through CHAKRAVARTI_TOKEN.
No notifier runs beside the session's gateway, so a ping stays queued here
(`tests/integration/notifier/` sends them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID, uuid4

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from ckrv.services.common.db import session_factory
from ckrv.services.notifier.tables import WebhookEndpoint
from tests.cli_runs import Completed, run_ckrv, user_environment
from tests.running_gateway import RunningGateway

pytestmark = pytest.mark.integration


@dataclass
class User:
    gateway: RunningGateway
    workdir: Path
    email: str

    def webhooks(self, *args: str) -> Completed:
        environment = user_environment(
            self.workdir / ".config",
            CHAKRAVARTI_API_URL=self.gateway.api_url,
            CHAKRAVARTI_TOKEN=self.gateway.token(self.email),
            CKRV_CREDENTIAL_STORE="file",
        )
        return run_ckrv(["webhooks", *args], env=environment)


@pytest.fixture
def user(gateway: RunningGateway, tmp_path: Path) -> User:
    return User(gateway, tmp_path, f"cli-webhooks-{uuid4().hex[:12]}@example.com")


async def test_a_webhook_from_adding_to_removing(user: User, database: AsyncEngine) -> None:
    added = user.webhooks(
        "add", "http://127.0.0.1:9/hook", "--events", "job.succeeded,job.failed", "--json"
    )
    assert added.exit_code == 0, added.stderr
    webhook = added.json()
    assert webhook["event_types"] == ["job.succeeded", "job.failed"]
    assert webhook["secret"].startswith("whsec_")

    listed = user.webhooks("list")
    assert listed.exit_code == 0, listed.stderr
    assert webhook["id"] in listed.stdout
    assert "succeeded, failed" in listed.stdout
    assert webhook["secret"] not in listed.stdout

    rotated = user.webhooks("rotate-secret", webhook["id"][:8], "-q")
    assert rotated.exit_code == 0, rotated.stderr
    assert rotated.stdout.strip().startswith("whsec_")
    assert rotated.stdout.strip() != webhook["secret"]

    queued = user.webhooks("test", webhook["id"], "--no-wait")
    assert queued.exit_code == 0, queued.stderr
    assert queued.stdout.startswith("Ping queued (delivery ")
    shown = user.webhooks("deliveries", webhook["id"], "--json")
    (delivery,) = shown.json()["deliveries"]
    assert (delivery["event_type"], delivery["status"]) == ("webhook.ping", "pending")
    table = user.webhooks("deliveries", webhook["id"])
    assert table.stdout.splitlines()[1].split()[:3] == ["webhook.ping", "pending", "0"]

    removed = user.webhooks("remove", webhook["id"])
    assert (removed.exit_code, removed.stdout) == (0, f"Removed webhook {webhook['id']}.\n")
    async with session_factory(database)() as session:
        assert await session.get(WebhookEndpoint, UUID(webhook["id"])) is None
    assert user.webhooks("list").stdout.startswith("No webhooks yet.")


def test_errors_say_what_is_wrong_and_exit_1(user: User) -> None:
    bad_url = user.webhooks("add", "ftp://hooks.example.com/ckrv")
    assert bad_url.exit_code == 1
    assert bad_url.stderr.startswith("Error: url: must be an http or https URL")

    bad_event = user.webhooks("add", "http://127.0.0.1:9/hook", "--events", "job.done")
    assert bad_event.exit_code == 1
    assert "unknown event type(s) job.done" in bad_event.stderr

    unknown = user.webhooks("remove", str(uuid4()), "--json")
    assert unknown.exit_code == 1
    assert json.loads(unknown.stderr)["error"] == "not_found"

    not_an_id = user.webhooks("deliveries", "hook")
    assert not_an_id.exit_code == 1
    assert not_an_id.stderr.startswith("Error: 'hook' is not a webhook id")
    assert user.webhooks("list", "-q").stdout == ""
