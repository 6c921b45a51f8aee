"""What the commands print: results on stdout, everything else on stderr.

`Output` carries the global flags: `--json` makes stdout machine-readable (and
errors a JSON object on stderr), `--quiet` keeps only the essential result,
`--verbose` adds diagnostics such as each HTTP request. `exit_with_error` is
the one way a command ends with an error.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn, TextIO

from ckrv.cli.config import TOKEN_VARIABLE
from ckrv.cli.errors import CliError, CloudError
from ckrv.cli.render import format_time


@dataclass(frozen=True)
class Output:
    json: bool = False
    quiet: bool = False
    verbose: bool = False

    @property
    def stdout(self) -> TextIO:
        # Looked up on every use, so a replaced sys.stdout (pytest's capture) is honoured.
        return sys.stdout

    @property
    def stderr(self) -> TextIO:
        return sys.stderr

    def result(self, text: str = "") -> None:
        """A line of the command's human-readable result."""
        print(text, file=self.stdout)

    def data(self, value: Any) -> None:
        """The command's result as JSON (for `--json`)."""
        print(json.dumps(value, indent=2, ensure_ascii=False), file=self.stdout)

    def info(self, text: str = "") -> None:
        """Helpful but inessential lines (next steps); dropped by `--quiet` and `--json`."""
        if not (self.quiet or self.json):
            print(text, file=self.stdout)

    def warn(self, text: str) -> None:
        print(f"Warning: {text}", file=self.stderr)

    def debug(self, text: str) -> None:
        if self.verbose:
            print(text, file=self.stderr)


def error_hint(error: CliError) -> list[str]:
    """Lines after the message: the service's details and what the user can do."""
    lines: list[str] = []
    extra = error.extra if isinstance(error, CloudError) else {}
    if error.code == "validation_error":
        for detail in extra.get("details") or []:
            if isinstance(detail, dict):
                field = detail.get("field") or "request"
                lines.append(f"  {field}: {detail.get('message', 'invalid')}")
    elif error.code == "quota_exceeded":
        resets_at = extra.get("quota_resets_at")
        if isinstance(resets_at, str):
            lines.append(f"Your quota resets at {_readable_time(resets_at)}.")
        if extra.get("upgrade_url"):
            lines.append(f"For more jobs, upgrade your plan: {extra['upgrade_url']}")
    elif error.code == "concurrency_limited":
        lines.append(
            "Wait for a running job to finish, or cancel one "
            "(see `ckrv jobs --status running`), then submit again."
        )
    elif error.code == "conflict":
        status = extra.get("status")
        if isinstance(status, str) and status not in error.message:
            lines.append(f"The job's status is {status}.")
    elif error.code == "unauthorized":
        lines.append(
            f"Your access token was refused. Check {TOKEN_VARIABLE}, or run `ckrv cloud login`."
        )
    elif error.code == "idempotency_conflict":
        lines.append("Run the command again: a new submission gets a new idempotency key.")
    if error.hint:
        lines.append(error.hint)
    return lines


def _readable_time(value: str) -> str:
    try:
        return format_time(datetime.fromisoformat(value))
    except ValueError:
        return value


def exit_with_error(
    error: CliError | str, output: Output | None = None, *, exit_code: int | None = None
) -> NoReturn:
    """Print `error` on stderr — a JSON object under `--json` — and exit with its code.

    A plain message is a user error (exit 1) unless `exit_code` says otherwise.
    """
    if isinstance(error, str):
        error = CliError(error)
    output = output or Output()
    code = exit_code if exit_code is not None else error.exit_code
    hints = error_hint(error)
    if output.json:
        body: dict[str, Any] = {"error": error.code, "message": error.message}
        if isinstance(error, CloudError):
            body.update(error.extra)
            if error.http_status is not None:
                body["http_status"] = error.http_status
        if hints:
            body["hint"] = "\n".join(line.strip() for line in hints)
        print(json.dumps(body, ensure_ascii=False), file=output.stderr)
    else:
        print(f"Error: {error.message}", file=output.stderr)
        for line in hints:
            print(line, file=output.stderr)
    raise SystemExit(code)


class Spinner:
    """A line on a terminal that turns while the command waits; silent elsewhere.

    Use `wait(seconds)` instead of `time.sleep`, and `clear()` when done, so the
    next output starts on a clean line.
    """

    FRAME_SECONDS = 0.1

    def __init__(self, text: str, stream: TextIO, *, enabled: bool) -> None:
        self.text = text
        self.stream = stream
        self.enabled = enabled
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        self._frames = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏" if encoding == "utf8" else "|/-\\"
        self._frame = 0
        self._drawn = False

    def wait(self, seconds: float) -> None:
        if not self.enabled:
            time.sleep(seconds)
            return
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self._draw()
            time.sleep(min(self.FRAME_SECONDS, left))

    def clear(self) -> None:
        if self._drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._drawn = False

    def _draw(self) -> None:
        frame = self._frames[self._frame % len(self._frames)]
        self._frame += 1
        self.stream.write(f"\r{frame} {self.text}")
        self.stream.flush()
        self._drawn = True
