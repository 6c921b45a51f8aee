"""Request bodies for the gateway tests."""

from __future__ import annotations

from typing import Any

SPEC = "id: add-login\ngoal: Add a login page with tests.\n"


def job_body(**overrides: Any) -> dict[str, Any]:
    return {
        "spec_content": SPEC,
        "git_repo_url": "https://example.com/acme/app.git",
        "git_base_branch": "main",
    } | overrides
