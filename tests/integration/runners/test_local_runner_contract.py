"""The local runner passes the runner contract, sandboxed in bubblewrap and as plain processes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from ckrv.services.runners.local import LocalRunner
from ckrv.services.runners.local_folder import WorkloadFolder
from ckrv.services.runners.sandbox import find_bubblewrap
from ckrv.services.runners.settings import SandboxMode
from tests.runner_contract import RunnerContract

pytestmark = pytest.mark.integration


class LocalRunnerContract(RunnerContract):
    """The contract, with the input files looked for in the workload folder's `input/`."""

    @pytest.fixture
    def input_files_present(self, backend_runner: LocalRunner) -> Callable[[str], bool]:
        return lambda name: WorkloadFolder(backend_runner.root / name).input_dir.exists()


class TestSandboxedLocalRunner(LocalRunnerContract):
    @pytest.fixture
    def backend_runner(self, tmp_path: Path) -> LocalRunner:
        if find_bubblewrap() is None:
            pytest.skip("bubblewrap is missing or cannot create namespaces here")
        return LocalRunner(tmp_path / "runner", sandbox=SandboxMode.REQUIRED)


class TestPlainLocalRunner(LocalRunnerContract):
    @pytest.fixture
    def backend_runner(self, tmp_path: Path) -> LocalRunner:
        return LocalRunner(tmp_path / "runner", sandbox=SandboxMode.OFF)
