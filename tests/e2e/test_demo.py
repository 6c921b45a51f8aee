"""The README's demo command works: it starts a stack, submits a job, and stops everything."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def test_demo_submits_a_job_and_shows_its_history() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "ckrv.services.stack.demo"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    output = completed.stdout
    assert "'status': 'ready'" in output
    assert "the same submission again appends 0 events" in output
    assert ".submitted  job.submitted  by user:demo" in output
    assert "status=pending (internal submitted)" in output
    assert "demo finished" in output
