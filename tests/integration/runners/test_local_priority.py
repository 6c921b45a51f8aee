"""Local workloads run at the lowest CPU priority, so a machine full of jobs still serves."""

from __future__ import annotations

from pathlib import Path

import pytest

from ckrv.services.runners.base import WorkloadState
from ckrv.services.runners.local import LocalRunner
from ckrv.services.runners.local_supervisor import WORKLOAD_NICENESS
from tests.runner_contract import finished, output_of, python_request

pytestmark = pytest.mark.integration

AUTOGROUP = Path("/proc/self/autogroup")
REPORT_PRIORITY = """
import os
from pathlib import Path
print(os.getpriority(os.PRIO_PROCESS, 0))
autogroup = Path("/proc/self/autogroup")
print(autogroup.read_text().split()[-1] if autogroup.exists() else "none")
"""


async def test_a_workload_and_its_session_run_at_the_lowest_cpu_priority(tmp_path: Path) -> None:
    runner = LocalRunner(tmp_path / "runner")
    request = python_request(REPORT_PRIORITY)
    await runner.create(request)
    status = await finished(runner, request.name)
    niceness, autogroup_niceness = (await output_of(runner, request.name)).decode().split()
    await runner.delete(request.name)

    assert status.state is WorkloadState.SUCCEEDED
    assert int(niceness) == WORKLOAD_NICENESS
    # The session's scheduling group, where the kernel has them, is what counts.
    if AUTOGROUP.exists():
        assert int(autogroup_niceness) == WORKLOAD_NICENESS
