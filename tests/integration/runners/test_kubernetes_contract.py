"""The Kubernetes runner passes the runner contract against kmock and a simulated kubelet."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ckrv.services.runners.kubernetes import KubernetesRunner
from tests.kubelet import SimulatedCluster, cluster
from tests.runner_contract import RunnerContract

pytestmark = pytest.mark.integration
__all__ = ["cluster"]


class TestKubernetesRunner(RunnerContract):
    input_file_forbidden_modes = 0o037

    @pytest.fixture
    async def backend_runner(self, cluster: SimulatedCluster) -> AsyncIterator[KubernetesRunner]:
        async with cluster.runner() as runner:
            yield runner
