"""`ckrv-worker` command line; the job steps arrive with the execution work."""

from __future__ import annotations

import cyclopts

app = cyclopts.App(
    name="ckrv-worker",
    help="Runs one Chakravarti Cloud job inside its workload: clone, run agents, upload results.",
)


def main() -> None:
    app()
