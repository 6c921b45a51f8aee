"""The local runner passes the runner contract, sandboxed in bubblewrap and as plain processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from ckrv.services.runners.local import LocalRunner
from ckrv.services.runners.sandbox import find_bubblewrap
from ckrv.services.runners.settings import SandboxMode
from tests.runner_contract import RunnerContract

pytestmark = pytest.mark.integration


class TestSandboxedLocalRunner(RunnerContract):
    @pytest.fixture
    def backend_runner(self, tmp_path: Path) -> LocalRunner:
        if find_bubblewrap() is None:
            pytest.skip("bubblewrap is missing or cannot create namespaces here")
        return LocalRunner(tmp_path / "runner", sandbox=SandboxMode.REQUIRED)


class TestPlainLocalRunner(RunnerContract):
    @pytest.fixture
    def backend_runner(self, tmp_path: Path) -> LocalRunner:
        return LocalRunner(tmp_path / "runner", sandbox=SandboxMode.OFF)
