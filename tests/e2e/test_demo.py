"""`just demo` works: a job runs for real on a throw-away stack, another is cancelled, all stops."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import processes_mentioning

pytestmark = pytest.mark.e2e


def test_demo_runs_a_job_to_its_diff_cancels_another_and_leaves_nothing_behind() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "ckrv.services.stack.demo"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    output = completed.stdout
    assert completed.returncode == 0, output + completed.stderr
    assert "'status': 'ready'" in output
    assert "$ ckrv run --cloud" in output

    followed = re.findall(r"^\$ ckrv status (\S+) --json", output, re.MULTILINE)
    # The second job is followed until it runs, then again after the cancel.
    health_job, slow_job = dict.fromkeys(followed)
    assert f"job {health_job} succeeded" in output
    assert "outcome:        script changed 2 files (+10 -0)" in output
    assert "job.succeeded  by service:watcher" in output
    # The diff, as `ckrv diff` shows it, holds exactly what the spec's script wrote.
    diff = output.split(f"$ ckrv diff {health_job}\n")[1]
    diff = diff.split("\n\nand a job to cancel")[0]
    assert re.findall(r"^diff --git a/(\S+)", diff, re.MULTILINE) == ["routes.py", "test_health.py"]
    added = [line[1:] for line in diff.splitlines() if line.startswith("+") and line[:3] != "+++"]
    assert added == [
        "",
        "",
        '@route("/health")',
        "def health():",
        '    return {"status": "ok"}',
        "from routes import ROUTES",
        "",
        "",
        "def test_health_answers_ok():",
        '    assert ROUTES["/health"]() == {"status": "ok"}',
    ]

    assert f"Cancellation requested for job {slow_job}" in output
    assert "\n  cancelled\n" in output.split(f"$ ckrv cancel {slow_job}")[1]
    assert re.search(rf"^{slow_job[:8]}\s+cancelled\s", output, re.MULTILINE)
    assert re.search(rf"^{health_job[:8]}\s+succeeded\s", output, re.MULTILINE)

    # The stack, its services and both jobs' workloads are gone, and so is the folder.
    folder = Path(
        re.findall(r"^demo folder \(removed at the end\): (\S+)", output, re.MULTILINE)[0]
    )
    assert processes_mentioning(str(folder)) == set()
    assert not folder.exists()
    assert output.endswith("local stack stopped; demo finished\n")
