"""Operators create accounts with API tokens and change tiers from the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from uuid import uuid4

import httpx
import pytest

from ckrv.services.stack.nats_server import NatsServer
from ckrv.services.stack.postgres_server import PostgresServer
from tests.running_gateway import RunningGateway

pytestmark = pytest.mark.integration


def operator(
    arguments: list[str], nats_server: NatsServer, postgres_server: PostgresServer
) -> subprocess.CompletedProcess[str]:
    environment = os.environ | {
        "CKRV_ENV": "dev",
        "CKRV_NATS_URL": nats_server.url,
        "CKRV_DATABASE_URL": postgres_server.dsn,
    }
    return subprocess.run(
        [sys.executable, "-m", "ckrv.services.operator", *arguments],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_create_a_user_with_a_token_then_change_its_tier(
    gateway: RunningGateway, nats_server: NatsServer, postgres_server: PostgresServer
) -> None:
    email = f"ops-{uuid4().hex[:8]}@example.com"
    created = operator(
        ["users", "create", "--email", email, "--tier", "pro", "--token"],
        nats_server,
        postgres_server,
    )
    assert created.returncode == 0, created.stderr
    token = created.stdout.split("CKRV_TOKEN): ")[1].strip()
    assert token.startswith("ckrv_")
    me = httpx.get(f"{gateway.api_url}/users/me", headers={"Authorization": f"Bearer {token}"})
    assert me.json()["subscription_tier"] == "pro"

    changed = operator(
        ["users", "set-tier", "--email", email, "--tier", "enterprise"],
        nats_server,
        postgres_server,
    )
    assert changed.returncode == 0, changed.stderr
    me = httpx.get(f"{gateway.api_url}/users/me", headers={"Authorization": f"Bearer {token}"})
    assert me.json()["subscription_tier"] == "enterprise"

    again = operator(["users", "create", "--email", email], nats_server, postgres_server)
    assert again.returncode == 1
    assert "exists already" in again.stderr
    missing = operator(
        ["users", "set-tier", "--email", "nobody@example.com", "--tier", "pro"],
        nats_server,
        postgres_server,
    )
    assert missing.returncode == 1
    assert "no user with the email" in missing.stderr
