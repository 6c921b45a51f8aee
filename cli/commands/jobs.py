"""Job management: `ckrv jobs` (list), `ckrv status <id>`, `ckrv cancel <id>`."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal

from cyclopts import Parameter
from cyclopts.validators import Number

from ckrv.cli.client import CloudClient
from ckrv.cli.errors import CloudError, UsageError
from ckrv.cli.models import Job
from ckrv.cli.options import DEFAULT_OPTIONS, CommonOptions
from ckrv.cli.render import job_details, jobs_table, next_steps, status_text

JobStatusName = Literal["pending", "running", "succeeded", "failed", "timeout", "cancelled"]

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
MIN_PREFIX_LENGTH = 4
_PREFIX = re.compile(r"^[0-9a-f-]+$")

JobRef = Annotated[
    str, Parameter(name="JOB_ID", help="Job id, or its first characters (at least 4).")
]


def jobs(
    *,
    status: JobStatusName | None = None,
    limit: Annotated[int, Parameter(validator=Number(gte=1, lte=MAX_LIMIT))] = DEFAULT_LIMIT,
    all_: Annotated[bool, Parameter(name="--all", negative="")] = False,
    options: CommonOptions = DEFAULT_OPTIONS,
) -> None:
    """List your jobs, newest first.

    Parameters
    ----------
    status
        Only jobs with this status.
    limit
        How many jobs to show (with --all: how many to fetch per request).
    all_
        Every job, following the pages to the end.
    """
    out = options.output()
    with CloudClient.from_environment(profile=options.profile, log=out.debug) as client:
        page = client.list_jobs(status=status, limit=limit)
        listed = list(page.jobs)
        next_cursor = page.next_cursor
        while all_ and next_cursor:
            page = client.list_jobs(status=status, limit=limit, cursor=next_cursor)
            listed.extend(page.jobs)
            next_cursor = page.next_cursor
    if out.json:
        out.data({"jobs": [job.body for job in listed], "next_cursor": next_cursor})
        return
    if out.quiet:
        for job in listed:
            out.result(job.id)
        return
    if not listed:
        out.result(
            f"No {status} jobs." if status else "No jobs yet. Submit one: ckrv run --cloud SPEC"
        )
        return
    out.result(jobs_table(listed, now=datetime.now(UTC)))
    if next_cursor:
        out.info(f"\nShowing the newest {len(listed)}; more with --all or a larger --limit.")


def status(job_id: JobRef, /, *, options: CommonOptions = DEFAULT_OPTIONS) -> None:
    """Show a job's status, progress and outcome."""
    out = options.output()
    ref = parse_job_ref(job_id)
    with CloudClient.from_environment(profile=options.profile, log=out.debug) as client:
        job = client.get_job(resolve_job_id(client, ref))
    if out.json:
        out.data(job.body)
        return
    if out.quiet:
        out.result(job.status)
        return
    for line in job_details(job, now=datetime.now(UTC)):
        out.result(line)
    out.info()
    out.info("Next:")
    for command in next_steps(job):
        out.info(f"  {command}")


def cancel(job_id: JobRef, /, *, options: CommonOptions = DEFAULT_OPTIONS) -> None:
    """Cancel a job that has not finished yet."""
    out = options.output()
    ref = parse_job_ref(job_id)
    with CloudClient.from_environment(profile=options.profile, log=out.debug) as client:
        job = client.cancel_job(resolve_job_id(client, ref))
    if out.json:
        out.data(job.body)
        return
    if out.quiet:
        return
    if job.status == "cancelled":
        out.result(f"Job {job.id} is cancelled.")
    else:
        out.result(f"Cancellation requested for job {job.id} (now {status_text(job)}).")
        out.info(f"It stops shortly; check with: ckrv status {job.id}")


def parse_job_ref(text: str) -> str:
    """A full job id (canonical form) or an id prefix; `UsageError` if it is neither."""
    ref = text.strip().lower()
    if _is_uuid(ref):
        return str(uuid.UUID(ref))
    if len(ref) < MIN_PREFIX_LENGTH or not _PREFIX.fullmatch(ref):
        raise UsageError(
            f"{text!r} is not a job id",
            hint="Give the id `ckrv run` printed, or the first characters shown by `ckrv jobs`.",
        )
    return ref


def resolve_job_id(client: CloudClient, ref: str) -> str:
    """The full id `ref` (from `parse_job_ref`) stands for, looking a prefix up in the listing."""
    if _is_uuid(ref):
        return ref
    matches = _jobs_with_prefix(client, ref)
    if not matches:
        raise CloudError("not_found", f"no job of yours has an id starting with {ref}", None, 404)
    if len(matches) > 1:
        raise UsageError(
            f"{len(matches)} jobs have ids starting with {ref}: "
            + ", ".join(job.id for job in matches[:5]),
            hint="Give more characters of the id.",
        )
    return matches[0].id


def _jobs_with_prefix(client: CloudClient, prefix: str) -> list[Job]:
    matches: list[Job] = []
    cursor: str | None = None
    while True:
        page = client.list_jobs(limit=MAX_LIMIT, cursor=cursor)
        matches.extend(job for job in page.jobs if job.id.lower().startswith(prefix))
        cursor = page.next_cursor
        if not cursor:
            return matches


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True
