"""Canned bodies of the gateway's contract for the CLI tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from ckrv.cli.credentials import StoredLogin

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


# Sign-in (RFC 8628 device flow, rotating refresh tokens)

DEVICE_CODE = "device-code-1"
USER_CODE = "WDJB-MJHT"
VERIFICATION_URI = "http://127.0.0.1/activate"
EMAIL = "ada@example.com"


def device_body(**overrides: Any) -> dict[str, Any]:
    """`POST /v1/auth/device`."""
    return {
        "device_code": DEVICE_CODE,
        "user_code": USER_CODE,
        "verification_uri": VERIFICATION_URI,
        "verification_uri_complete": f"{VERIFICATION_URI}?user_code={USER_CODE}",
        "expires_in": 600,
        "interval": 5,
    } | overrides


def token_body(n: int = 1, *, expires_in: float = 900) -> dict[str, Any]:
    """`POST /v1/auth/token` or `/auth/refresh`: the `n`th pair of tokens of a session."""
    return {
        "access_token": f"eyJhbGciOiJSUzI1NiJ9.access-{n}.signature",
        "refresh_token": f"refresh-{n}",
        "token_type": "Bearer",
        "expires_in": expires_in,
    }


def access_token(n: int) -> str:
    return str(token_body(n)["access_token"])


def oauth_error(code: str) -> dict[str, Any]:
    """An RFC 6749 §5.2 error body."""
    return {"error": code, "error_description": code.replace("_", " ")}


def user_body(**overrides: Any) -> dict[str, Any]:
    """`GET /v1/users/me`."""
    return {
        "id": "5b0e3c9a-1f2d-4e5a-9b8c-7d6e5f4a3b2c",
        "email": EMAIL,
        "name": "Ada",
        "subscription_tier": "pro",
        "job_quota_remaining": 97,
        "billing_cycle_end": "2025-04-01T00:00:00Z",
    } | overrides


def stored_login(api_url: str, n: int = 1, *, expires_in: float = 900) -> StoredLogin:
    """What `ckrv cloud login` stores after the service issued `token_body(n)`."""
    tokens = token_body(n)
    return StoredLogin(
        api_url=api_url,
        access_token=tokens["access_token"],
        access_token_expires_at=datetime.now(UTC) + timedelta(seconds=expires_in),
        refresh_token=tokens["refresh_token"],
        email=EMAIL,
    )
