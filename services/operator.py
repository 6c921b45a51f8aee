"""`ckrv-cloud`: the operator's command (start the local stack, serve one service, migrate)."""

from __future__ import annotations

import cyclopts

app = cyclopts.App(name="ckrv-cloud", help="Operate Chakravarti Cloud: local stack and services.")


def main() -> None:
    app()
