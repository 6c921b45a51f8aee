"""Validation of what a job names in git: repository URLs and branch names.

Branch names follow `git check-ref-format --branch`; the tests compare this
validator with git's own answer for every case.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

MAX_BRANCH_LENGTH = 255
SCP_LIKE = re.compile(r"^(?P<user>[A-Za-z0-9._-]+)@(?P<host>[A-Za-z0-9.-]+):(?P<path>[^/].*)$")
_FORBIDDEN_BRANCH_CHARACTERS = frozenset(" ~^:?*[\\\x7f")


class GitInputError(ValueError):
    """A repository URL or branch name the service refuses; the message says why."""


def validate_repository_url(url: str, *, allow_local: bool = False) -> str:
    """Accept https and ssh URLs; local paths and `file://` only when `allow_local`."""
    url = url.strip()
    if not url:
        raise GitInputError("git_repo_url is empty")
    if SCP_LIKE.match(url):
        return url
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in {"https", "ssh"}:
        if not parts.hostname or not parts.path.strip("/"):
            raise GitInputError(f"an {scheme} repository URL needs a host and a path")
        if parts.password is not None:
            raise GitInputError(
                "put no credentials in git_repo_url; store them with "
                "`ckrv cloud credentials add` and name them in git_credential_name"
            )
        return url
    if allow_local and (scheme == "file" or (not scheme and url.startswith("/"))):
        return url
    if scheme == "http":
        raise GitInputError("http repository URLs are refused: use https or ssh")
    raise GitInputError(
        "git_repo_url must be an https URL, ssh://… or git@host:path; "
        "local paths and file:// URLs cannot be reached by the service"
    )


def branch_name_problem(name: str) -> str | None:
    """Why `git check-ref-format --branch` would refuse `name`, or None if it accepts it."""
    problem = None
    if not name:
        problem = "is empty"
    elif len(name) > MAX_BRANCH_LENGTH:
        problem = f"is longer than {MAX_BRANCH_LENGTH} characters"
    elif name.startswith("-"):
        problem = "starts with '-'"
    elif name == "HEAD":
        # A lone `@` is fine here: git refuses it as a whole ref name, not as a branch name.
        problem = "is 'HEAD'"
    elif any(
        ord(character) < 0o40 or character in _FORBIDDEN_BRANCH_CHARACTERS for character in name
    ):
        problem = "contains a space, a control character or one of ~ ^ : ? * [ \\"
    elif ".." in name or "@{" in name or "//" in name:
        problem = "contains '..', '@{' or '//'"
    elif name.startswith("/") or name.endswith(("/", ".")):
        problem = "starts with '/' or ends with '/' or '.'"
    elif any(part.startswith(".") or part.endswith(".lock") for part in name.split("/")):
        problem = "has a part that starts with '.' or ends with '.lock'"
    return problem


def validate_branch_name(name: str, *, field: str = "git_base_branch") -> str:
    problem = branch_name_problem(name)
    if problem is not None:
        raise GitInputError(f"{field} {name!r} is not a valid branch name: it {problem}")
    return name
