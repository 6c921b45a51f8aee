"""Fixtures of the CLI unit tests: the contract server, a clean environment, a CLI runner."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ckrv.cli import client as client_module
from ckrv.cli.app import main
from ckrv.cli.credentials import EncryptedFileStore, config_dir
from tests.unit.cli.bodies import TOKEN
from tests.unit.cli.contract_server import ContractServer, RunningContractServer
from tests.unit.cli.git_repos import Clone, isolate_git, make_clone


@dataclass(frozen=True)
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


CliRunner = Callable[..., CliResult]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No CKRV_*/CHAKRAVARTI_* setting or stored login of the machine running the tests leaks in.

    Credentials go to an encrypted file under the test's own XDG_CONFIG_HOME, never
    to the machine's keyring; connection retries are instant.
    """
    for name in list(os.environ):
        if name.startswith(("CHAKRAVARTI_", "CKRV_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("CKRV_CREDENTIAL_STORE", "file")
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
def service(monkeypatch: pytest.MonkeyPatch) -> Iterator[ContractServer]:
    """The contract server, with the CLI pointed at it by CKRV_API_URL and not signed in."""
    running = RunningContractServer()
    monkeypatch.setenv("CKRV_API_URL", running.server.api_url)
    monkeypatch.setenv("CHAKRAVARTI_TIMEOUT", "5")
    yield running.server
    running.stop()


@pytest.fixture
def credentials() -> EncryptedFileStore:
    """The store the CLI keeps logins in during these tests: files under XDG_CONFIG_HOME."""
    return EncryptedFileStore(config_dir())


@pytest.fixture
def ckrv(capsys: pytest.CaptureFixture[str]) -> CliRunner:
    """Run `ckrv` in this process with the given arguments; its exit code and output."""

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            main(list(args))
            exit_code = 0
        except SystemExit as exit:
            exit_code = exit.code if isinstance(exit.code, int) else 1
        captured = capsys.readouterr()
        return CliResult(exit_code, captured.out, captured.err)

    return run


@pytest.fixture
def clone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Clone:
    """A clone of a bare remote, `main` pushed; git isolated from the machine's configuration."""
    home = tmp_path / "home"
    home.mkdir()
    isolate_git(monkeypatch, home)
    return make_clone(tmp_path)


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text("id: add-login\ngoal: Add a login page with tests.\n")
    return path
