"""Plain-text views of jobs: the `ckrv jobs` table and the `ckrv status` details.

Pure functions of their inputs (the current time and time zone included), so
the tests pin what a user sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, tzinfo

from ckrv.cli.models import Job

SHORT_ID_LENGTH = 8
MAX_REPO_WIDTH = 40
NONE = "-"


def short_id(job_id: str) -> str:
    return job_id[:SHORT_ID_LENGTH]


def format_duration(seconds: float | None) -> str:
    """`42s`, `3m05s`, `1h02m`, `2d03h`; `-` when unknown."""
    if seconds is None or seconds < 0:
        return NONE
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def format_rough_duration(seconds: float) -> str:
    """A wait to the minute: `under a minute`, `10m`, `1h05m`."""
    minutes = round(seconds / 60)
    if minutes < 1:
        return "under a minute"
    if minutes < 60:
        return f"{minutes}m"
    return f"{minutes // 60}h{minutes % 60:02d}m"


def format_age(moment: datetime, now: datetime) -> str:
    """How long ago `moment` was: `just now`, `5m ago`, `3h ago`, `2d ago`."""
    seconds = (now - moment).total_seconds()
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{int(seconds // 60)}m ago"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h ago"
    return f"{int(seconds // 86400)}d ago"


def format_time(moment: datetime, tz: tzinfo | None = None) -> str:
    """A timestamp in the user's time zone (or `tz`), to the second, with the zone's name."""
    local = moment.astimezone(tz)
    return local.strftime("%Y-%m-%d %H:%M:%S %Z").strip()


def short_repo(url: str) -> str:
    """`https://github.com/acme/app.git` → `github.com/acme/app`, cut to a column's width."""
    text = url
    for prefix in ("https://", "http://", "ssh://", "git://", "file://"):
        if text.startswith(prefix):
            text = text[len(prefix) :]
            break
    if "@" in text.split("/", 1)[0]:
        text = text.split("@", 1)[1]
    text = text.removesuffix(".git")
    if len(text) > MAX_REPO_WIDTH:
        text = "..." + text[-(MAX_REPO_WIDTH - 3) :]
    return text


def status_text(job: Job) -> str:
    """The status, with its phase while the job is unfinished: `running (executing)`."""
    text = job.status
    if job.phase and not job.is_terminal:
        text += f" ({job.phase})"
    return text


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart; the last column is not padded."""
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    lines = []
    for row in [headers, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def jobs_table(jobs: Sequence[Job], now: datetime) -> str:
    headers = ("ID", "STATUS", "PHASE", "REPO", "BRANCH", "CREATED", "ELAPSED")
    rows = [
        (
            short_id(job.id),
            job.status,
            job.phase or NONE,
            short_repo(job.git_repo_url),
            job.git_base_branch,
            format_age(job.created_at, now),
            format_duration(job.elapsed_seconds),
        )
        for job in jobs
    ]
    return format_table(headers, rows)


def job_details(job: Job, now: datetime, tz: tzinfo | None = None) -> list[str]:
    """The `ckrv status` view: one `label  value` line per known fact."""
    fields: list[tuple[str, str]] = [
        ("Job", job.id),
        ("Status", job.status),
        ("Phase", job.phase or NONE),
        ("Attempt", str(job.attempt)),
        ("Repository", job.git_repo_url),
        ("Base branch", job.git_base_branch),
    ]
    if job.feature_branch_name:
        fields.append(("Result branch", job.feature_branch_name))
    if job.spec_id:
        fields.append(("Spec", job.spec_id))
    fields.append(("Created", format_time(job.created_at, tz)))
    if job.started_at:
        fields.append(("Started", format_time(job.started_at, tz)))
    if job.completed_at:
        fields.append(("Completed", format_time(job.completed_at, tz)))
    fields.append(("Elapsed", format_duration(job.elapsed_seconds)))
    if job.estimated_completion_at and not job.is_terminal:
        eta = job.estimated_completion_at
        remaining = (eta - now).total_seconds()
        when = f"in about {format_rough_duration(remaining)}" if remaining > 0 else "overdue"
        fields.append(("Estimated end", f"{format_time(eta, tz)} ({when})"))
    if job.cancel_requested and not job.is_terminal:
        fields.append(("Cancellation", "requested"))
    if job.result_summary:
        fields.append(("Outcome", job.result_summary))
    if job.error_message:
        fields.append(("Error", job.error_message))
    width = max(len(label) for label, _ in fields)
    return [f"{label + ':':<{width + 1}}  {value}" for label, value in fields]


def next_steps(job: Job) -> list[str]:
    """Commands worth running next for a job in this state."""
    if job.status == "succeeded":
        return [f"ckrv pull {job.id}", f"ckrv logs {job.id}"]
    if job.is_terminal:
        return [f"ckrv logs {job.id}"]
    return [f"ckrv logs -f {job.id}", f"ckrv status {job.id}"]
