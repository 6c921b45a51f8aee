"""`python -m ckrv.services.stack`: the local stack, with the options of `ckrv-cloud up`."""

from __future__ import annotations

import cyclopts

from ckrv.services.stack.cli import up

app = cyclopts.App(
    name="python -m ckrv.services.stack", help="Run the Chakravarti Cloud local stack."
)
app.default(up)

if __name__ == "__main__":
    app()
