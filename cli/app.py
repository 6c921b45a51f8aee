"""Root of the `ckrv` command: the command groups of the user-facing CLI."""

from __future__ import annotations

import cyclopts

app = cyclopts.App(
    name="ckrv",
    help="Chakravarti: run spec-driven coding-agent jobs, locally or on Chakravarti Cloud.",
)


def main() -> None:
    app()
