"""Canned bodies of the gateway's contract for the CLI tests."""

from __future__ import annotations

from typing import Any

# What the CLI sends the contract server as its bearer token.
TOKEN = "test-token"
JOB_ID = "3f2a1b2c-4d5e-4f60-8a7b-9c0d1e2f3a4b"
OTHER_JOB_ID = "3f2a9999-0000-4000-8000-000000000001"
SPEC = "id: add-login\ngoal: Add a login page with tests.\n"


def job_body(**overrides: Any) -> dict[str, Any]:
    """A job as `GET /v1/jobs/{id}` returns it: pending, just submitted."""
    return {
        "id": JOB_ID,
        "status": "pending",
        "phase": "queued",
        "attempt": 0,
        "spec_id": "add-login",
        "git_repo_url": "https://github.com/acme/app.git",
        "git_base_branch": "main",
        "git_credential_name": None,
        "feature_branch_name": "ckrv/3f2a1b2c",
        "created_at": "2025-03-01T10:00:00Z",
        "started_at": None,
        "completed_at": None,
        "result_status": None,
        "result_summary": None,
        "error_message": None,
        "metrics": None,
        "elapsed_seconds": None,
        "estimated_completion_at": None,
        "cancel_requested": False,
    } | overrides


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": code, "message": message, **extra}
