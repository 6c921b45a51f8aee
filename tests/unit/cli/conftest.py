"""Fixtures of the CLI unit tests: the contract server and a clean environment."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from ckrv.cli import client as client_module
from tests.unit.cli.bodies import TOKEN
from tests.unit.cli.contract_server import ContractServer, RunningContractServer


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No CHAKRAVARTI_* setting of the machine running the tests leaks in; retries are instant."""
    for name in list(os.environ):
        if name.startswith("CHAKRAVARTI_"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(client_module, "RETRY_DELAY_SECONDS", 0.0)


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[ContractServer]:
    """The contract server, with the CLI pointed at it and signed in."""
    running = RunningContractServer()
    monkeypatch.setenv("CHAKRAVARTI_API_URL", running.server.api_url)
    monkeypatch.setenv("CHAKRAVARTI_TOKEN", TOKEN)
    monkeypatch.setenv("CHAKRAVARTI_TIMEOUT", "5")
    yield running.server
    running.stop()
