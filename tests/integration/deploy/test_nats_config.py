"""The production NATS configuration is one that nats-server accepts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ckrv.services.stack.process import find_executable

pytestmark = pytest.mark.integration

CONFIG = Path(__file__).parents[3] / "deploy" / "nats" / "nats-server.conf"
SECRETS = (
    "NATS_GATEWAY_PASSWORD",
    "NATS_DISPATCHER_PASSWORD",
    "NATS_WATCHER_PASSWORD",
    "NATS_LOG_RELAY_PASSWORD",
    "NATS_ARTIFACTS_PASSWORD",
    "NATS_NOTIFIER_PASSWORD",
)


def test_production_config_is_valid() -> None:
    environment = {"NATS_SERVER_NAME": "nats-0"} | dict.fromkeys(SECRETS, "secret")
    checked = subprocess.run(
        [str(find_executable("nats-server")), "-c", str(CONFIG), "-t"],
        env=environment,
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stderr
    assert "is valid" in checked.stderr + checked.stdout
