"""`ckrv` run as a user runs it: in a process of its own, without a terminal, and nothing of the
machine running the tests (its logins, its settings) showing through."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CKRV = [sys.executable, "-m", "ckrv.cli.app"]
SETTING_PREFIXES = ("CHAKRAVARTI_", "CKRV_")


@dataclass(frozen=True)
class Completed:
    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def error(self) -> Any:
        """The `--json` error object on stderr."""
        return json.loads(self.stderr)


def user_environment(config_home: Path, **settings: str) -> dict[str, str]:
    """This process's environment without its ckrv settings, a config folder of the user's own,
    and `settings` (CHAKRAVARTI_API_URL, CKRV_CREDENTIAL_STORE, ...)."""
    inherited = {
        name: value for name, value in os.environ.items() if not name.startswith(SETTING_PREFIXES)
    }
    return inherited | {"XDG_CONFIG_HOME": str(config_home)} | settings


def run_ckrv(
    args: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path | None = None,
    stdin: str | None = None,
    timeout: float = 60,
) -> Completed:
    """`ckrv ARGS` to its end; `stdin` its input, or none (not a terminal either way)."""
    completed = subprocess.run(
        [*CKRV, *args],
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    assert "Traceback" not in completed.stderr, completed.stderr
    return Completed(completed.returncode, completed.stdout, completed.stderr)
