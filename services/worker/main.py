"""`ckrv-worker` command line: `ckrv-worker run` does the job described in `$CKRV_INPUT_DIR`.

It uses argparse rather than the CLI's cyclopts, and prints its first log line before
importing the job's modules (pydantic, PyYAML, httpx: about 200 ms): the time from a job's
submission to its first log line is one of the service's benchmarks.
"""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType

from ckrv.services.worker.joblog import JobLog
from ckrv.services.worker.outcome import Terminated


def _terminate(signal_number: int, frame: FrameType | None) -> None:
    raise Terminated


def run() -> int:
    """Run the job; the exit code (0 success, 1 job failed, 2 infrastructure, 3 verification)."""
    # Installed first: a SIGTERM from now on stops the running command's group and exits.
    signal.signal(signal.SIGTERM, _terminate)
    log = JobLog()
    log.started("ckrv-worker started")
    from ckrv.services.worker.job import run_worker

    return run_worker(log)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ckrv-worker",
        description="Runs one Chakravarti Cloud job inside its workload: "
        "clone, run agents, upload results.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "run",
        help="do the job in $CKRV_INPUT_DIR (job.json, credential) in $CKRV_WORKSPACE",
        description="Do the job described by $CKRV_INPUT_DIR/job.json in $CKRV_WORKSPACE "
        "(default: a temporary folder), printing JSON log lines on stdout.",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    _parser().parse_args(argv)
    sys.exit(run())
