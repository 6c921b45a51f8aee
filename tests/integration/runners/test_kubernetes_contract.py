"""The Kubernetes runner passes the runner contract against kmock and a simulated kubelet."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from ckrv.services.runners.kubernetes import KubernetesRunner
from tests.kubelet import SECRETS, SimulatedCluster, cluster
from tests.runner_contract import RunnerContract

pytestmark = pytest.mark.integration
__all__ = ["cluster"]


class TestKubernetesRunner(RunnerContract):
    input_file_forbidden_modes = 0o037

    @pytest.fixture
    async def backend_runner(self, cluster: SimulatedCluster) -> AsyncIterator[KubernetesRunner]:
        async with cluster.runner() as runner:
            yield runner

    @pytest.fixture
    def input_files_present(
        self, cluster: SimulatedCluster, backend_runner: KubernetesRunner
    ) -> Callable[[str], bool]:
        return lambda name: (
            cluster.emulator.find(SECRETS, backend_runner.namespace, name) is not None
        )
