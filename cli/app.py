"""Root of the `ckrv` command: the command groups of the user-facing CLI.

The root's meta app takes the global flags before the command name and runs
the command; every failure ends here, through `exit_with_error`, as a message on
stderr and an exit code: 0 ok, 1 the user's to fix, 2 the system's, 130
interrupted, 141 when the reader of stdout went away. No traceback reaches the
user unless `--verbose` asks for it.
"""

from __future__ import annotations

import inspect
import os
import sys
import traceback
from collections.abc import Sequence
from dataclasses import replace
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import cyclopts
from cyclopts import Parameter

from ckrv.cli.commands.cloud import cloud
from ckrv.cli.commands.jobs import cancel, jobs, status
from ckrv.cli.commands.logs import logs
from ckrv.cli.commands.pull import diff, pull
from ckrv.cli.commands.run import run
from ckrv.cli.commands.webhooks import webhooks
from ckrv.cli.errors import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERRUPTED,
    EXIT_SYSTEM_ERROR,
    CliError,
    UsageError,
)
from ckrv.cli.options import DEFAULT_OPTIONS, CommonOptions
from ckrv.cli.output import exit_with_error


def _version() -> str:
    try:
        return version("chakravarti-cloud")
    except PackageNotFoundError:
        return "unknown"


app = cyclopts.App(
    name="ckrv",
    help="Chakravarti: run spec-driven coding-agent jobs on Chakravarti Cloud.",
    version=_version,
    help_epilogue=(
        "Log in with `ckrv cloud login`. Environment: CKRV_API_URL (or CHAKRAVARTI_API_URL; "
        "default http://127.0.0.1:8080/v1, the local stack), CKRV_TOKEN (or "
        "CHAKRAVARTI_TOKEN: an API token for scripts and CI, used instead of the login), "
        'CKRV_PROFILE (which stored login to use; default "default"), CKRV_CREDENTIAL_STORE '
        "(file or keyring; default: the keyring if the system has one), CHAKRAVARTI_TIMEOUT "
        "(seconds, default 30). "
        "Exit codes: 0 ok, 1 a problem with your input or request, 2 a problem with the "
        "service or the network, 130 interrupted."
    ),
    exit_on_error=False,
    print_error=False,
)
app.command(run)
app.command(jobs)
app.command(status)
app.command(logs)
app.command(pull)
app.command(diff)
app.command(cancel)
app.command(cloud)
app.command(webhooks)


@app.meta.default
def _launcher(
    *tokens: Annotated[str, Parameter(show=False, allow_leading_hyphen=True)],
    options: CommonOptions = DEFAULT_OPTIONS,
) -> None:
    out = options.output()
    try:
        command, bound, _ = app.parse_args(tokens, exit_on_error=False, print_error=False)
    except cyclopts.CycloptsError as error:
        # The command's own flags were not parsed; honour a --json among them anyway.
        wants_json = (
            "--json" in tokens[: tokens.index("--")] if "--" in tokens else "--json" in tokens
        )
        exit_with_error(_usage_error(error), replace(out, json=out.json or wants_json))
    if "options" in inspect.signature(command).parameters:
        options = options.merged(bound.arguments.get("options"))
        bound.arguments["options"] = options
        out = options.output()
    try:
        command(*bound.args, **bound.kwargs)
    except CliError as error:
        exit_with_error(error, out)
    except KeyboardInterrupt:
        exit_with_error("interrupted", out, exit_code=EXIT_INTERRUPTED)
    except BrokenPipeError:
        raise
    except Exception as error:
        if out.verbose:
            traceback.print_exc()
        exit_with_error(
            CliError(
                f"unexpected {type(error).__name__}: {error}",
                code="internal_error",
                hint="This is a bug in ckrv; run again with --verbose for details and report it.",
                exit_code=EXIT_SYSTEM_ERROR,
            ),
            out,
        )


def _usage_error(error: cyclopts.CycloptsError) -> UsageError:
    return UsageError(
        " ".join(str(error).split()), hint="See `ckrv --help`, or `ckrv COMMAND --help`."
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `ckrv` console script."""
    tokens = sys.argv[1:] if argv is None else list(argv)
    try:
        app.meta(tokens, exit_on_error=False, print_error=False, result_action="return_value")
        sys.stdout.flush()
    except cyclopts.CycloptsError as error:
        exit_with_error(_usage_error(error))
    except KeyboardInterrupt:
        exit_with_error("interrupted", exit_code=EXIT_INTERRUPTED)
    except BrokenPipeError:
        # The reader of stdout went away (`ckrv jobs | head -1`): nothing left to tell it.
        # Point stdout at /dev/null so the interpreter's final flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(EXIT_BROKEN_PIPE) from None


if __name__ == "__main__":
    main()
