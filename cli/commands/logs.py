"""`ckrv logs <id>`: a job's log, or with `-f` its lines as they come until the job ends."""

from __future__ import annotations

import json
import os
from datetime import tzinfo
from typing import Annotated

from cyclopts import Parameter
from cyclopts.validators import Number

from ckrv.cli.client import CloudClient
from ckrv.cli.commands.jobs import JobRef, parse_job_ref, resolve_job_id
from ckrv.cli.errors import CliError
from ckrv.cli.log_follow import follow_log
from ckrv.cli.models import Job, LogLine
from ckrv.cli.options import DEFAULT_OPTIONS, CommonOptions
from ckrv.cli.output import Output

RESET = "\033[0m"
DIM = "\033[2m"
CYAN = "\033[36m"
LEVEL_COLOURS = {
    "debug": "\033[2m",
    "info": "\033[32m",
    "warn": "\033[33m",
    "error": "\033[1;31m",
}


def logs(
    job_id: JobRef,
    /,
    *,
    follow: Annotated[bool, Parameter(alias="-f", negative="")] = False,
    tail: Annotated[int | None, Parameter(validator=Number(gte=1))] = None,
    no_color: Annotated[bool, Parameter(name="--no-color", negative="")] = False,
    options: CommonOptions = DEFAULT_OPTIONS,
) -> None:
    """Show a job's log; with -f, follow it until the job ends.

    Each line shows its time, level and source. With --json, each line is a JSON
    object of its own (JSON Lines). With -f the command ends with the job: exit
    code 0 when it succeeded, 1 when it failed, timed out or was cancelled; a lost
    connection is made again, going on after the last line shown.

    Parameters
    ----------
    follow
        Follow the log as the job writes it, until the job ends.
    tail
        Start at the last N lines.
    no_color
        Print without colours (also when NO_COLOR is set or the output is not a terminal).
    """
    out = options.output()
    colour = use_colour(out, no_color=no_color)
    ref = parse_job_ref(job_id)
    with CloudClient.from_environment(profile=options.profile, log=out.debug) as client:
        full_id = resolve_job_id(client, ref)
        if follow:
            follow_to_end(client, full_id, out, tail=tail, colour=colour)
            return
        page = client.job_logs(full_id, tail=tail)
        while True:
            for line in page.logs:
                print_line(out, line, colour=colour)
            # A full page may have more after it; a short one is the log so far.
            if page.next is None or not page.logs:
                break
            page = client.job_logs(full_id, after=page.next)


def follow_to_end(
    client: CloudClient, job_id: str, out: Output, *, tail: int | None, colour: bool
) -> None:
    """Print the job's lines until it ends; a `CliError` (exit 1) unless it succeeded."""
    status = follow_log(
        client,
        job_id,
        tail=tail,
        on_line=lambda line: print_line(out, line, colour=colour),
        on_notice=out.warn,
    )
    if status == "succeeded":
        out.info(f"Job {job_id} succeeded.")
        out.info(f"Next: ckrv pull {job_id}")
        return
    raise job_outcome_error(client.get_job(job_id))


def job_outcome_error(job: Job) -> CliError:
    message = f"job {job.id} {job.status}"
    if job.error_message:
        message += f": {job.error_message}"
    return CliError(
        message, code=f"job_{job.status}", hint=f"See the whole log: ckrv logs {job.id}"
    )


def use_colour(out: Output, *, no_color: bool) -> bool:
    if no_color or out.json or os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return out.stdout.isatty()


def print_line(out: Output, line: LogLine, *, colour: bool) -> None:
    if out.json:
        out.result(json.dumps(line.body, ensure_ascii=False))
    else:
        out.result(format_line(line, colour=colour))


def format_line(line: LogLine, *, colour: bool, tz: tzinfo | None = None) -> str:
    """`2025-03-01 10:00:03 INFO  worker  Cloning ...` in the user's time zone (or `tz`)."""
    when = line.timestamp.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S")
    level = line.level.lower()
    label = level.upper().ljust(5)
    if not colour:
        return f"{when} {label} {line.source}  {line.message}"
    level_colour = LEVEL_COLOURS.get(level, "")
    return (
        f"{DIM}{when}{RESET} {level_colour}{label}{RESET} {CYAN}{line.source}{RESET}  "
        f"{line.message}"
    )
