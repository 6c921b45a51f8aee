"""The README's demo command works: a stack, a job through the `ckrv` command, a clean stop."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def test_demo_runs_a_job_through_the_cli_and_stops_the_stack() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "ckrv.services.stack.demo"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    output = completed.stdout
    assert "'status': 'ready'" in output
    assert "$ ckrv run --cloud" in output
    assert "Spec:           add-health-endpoint" in output
    assert "job.submitted  by user:" in output
    assert "Cancellation requested for job" in output
    assert "local stack stopped; demo finished" in output
