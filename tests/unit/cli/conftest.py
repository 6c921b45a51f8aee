"""Fixtures of the CLI unit tests: the contract server, a clean environment, a git clone."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ckrv.cli import client as client_module
from tests.unit.cli.bodies import TOKEN
from tests.unit.cli.contract_server import ContractServer, RunningContractServer
from tests.unit.cli.git_repos import Clone, isolate_git, make_clone


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


@pytest.fixture
def clone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Clone:
    """A clone of a bare remote, `main` pushed; git isolated from the machine's configuration."""
    home = tmp_path / "home"
    home.mkdir()
    isolate_git(monkeypatch, home)
    return make_clone(tmp_path)
