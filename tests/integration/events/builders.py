"""Builders of realistic job events for the event backbone's integration tests."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from ckrv.events.catalog import JobSubmitted, JobSubmittedData


def submitted(job_id: UUID, **overrides: Any) -> JobSubmitted:
    data = {
        "user_id": "u-1",
        "tier": "free",
        "spec_id": "add-login",
        "spec_content": "id: add-login\ngoal: add a login page\n",
        "git_repo_url": "https://example.com/acme/app.git",
        "git_base_branch": "main",
        "time_limit_seconds": 1800,
        "max_attempts": 3,
    } | overrides
    return JobSubmitted(job_id=job_id, actor="user:u-1", data=JobSubmittedData(**data))
