"""What the local git checkout says: the origin URL, the current branch, and whether it is pushed.

Only local state is read (no fetch): "pushed" means as far as the last fetch knows.
`run_git` runs any git command the same way, for the commands that change the checkout.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ckrv.cli.errors import UsageError

GIT_TIMEOUT_SECONDS = 15


class GitError(Exception):
    """A git command failed; the message is git's own explanation."""


def run_git(
    cwd: Path, *args: str, timeout: float = GIT_TIMEOUT_SECONDS, env: dict[str, str] | None = None
) -> str:
    """What `git <args>` prints, without trailing whitespace; `GitError` with git's last
    complaint if it fails.

    `env`: variables added to the environment, such as `GIT_INDEX_FILE`.
    """
    try:
        completed = subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, **env} if env else None,
        )
    except FileNotFoundError as error:
        raise GitError("git is not installed (or not on PATH)") from error
    except subprocess.TimeoutExpired as error:
        raise GitError(f"`git {' '.join(args)}` took longer than {timeout:g}s") from error
    if completed.returncode != 0:
        message = completed.stderr.strip().splitlines()
        raise GitError(message[-1] if message else f"`git {' '.join(args)}` failed")
    return completed.stdout.rstrip()


def origin_url(cwd: Path) -> str:
    """The `origin` remote's URL; `UsageError` suggesting `--repo` if there is none."""
    try:
        url = run_git(cwd, "remote", "get-url", "origin")
    except GitError as error:
        raise UsageError(
            f"no --repo given, and the repository URL cannot be read from git here ({error})",
            hint="Pass --repo URL, or run the command inside a clone that has an `origin` remote.",
        ) from error
    if not url:
        raise UsageError("the `origin` remote has no URL", hint="Pass --repo URL.")
    return url


def current_branch(cwd: Path) -> str:
    """The checked-out branch; `UsageError` suggesting `--base-branch` if there is none."""
    try:
        branch = run_git(cwd, "rev-parse", "--abbrev-ref", "HEAD")
    except GitError as error:
        raise UsageError(
            f"no --base-branch given, and the current branch cannot be read from git ({error})",
            hint="Pass --base-branch BRANCH.",
        ) from error
    if branch == "HEAD":
        raise UsageError(
            "no --base-branch given, and HEAD is detached (no branch is checked out)",
            hint="Pass --base-branch BRANCH, or check out the branch the job should start from.",
        )
    return branch


@dataclass(frozen=True)
class PushState:
    """How a local branch compares with its upstream, as of the last fetch."""

    branch: str
    upstream: str | None
    """e.g. `origin/main`; None when the branch tracks nothing (or its upstream is gone)."""
    ahead: int
    """Local commits the upstream does not have."""
    uncommitted: bool
    """Changes to tracked files in the working tree or index (only for the current branch)."""


def push_state(cwd: Path, branch: str) -> PushState | None:
    """Compare `branch` with its upstream; None if `branch` is not a local branch here."""
    try:
        run_git(cwd, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}")
    except GitError:
        return None
    try:
        upstream: str | None = run_git(
            cwd, "rev-parse", "--abbrev-ref", "--symbolic-full-name", f"{branch}@{{upstream}}"
        )
    except GitError:
        upstream = None
    ahead = 0
    if upstream:
        ahead = int(
            run_git(cwd, "rev-list", "--count", f"{branch}@{{upstream}}..refs/heads/{branch}")
        )
    uncommitted = False
    try:
        if run_git(cwd, "rev-parse", "--abbrev-ref", "HEAD") == branch:
            uncommitted = bool(run_git(cwd, "status", "--porcelain", "--untracked-files=no"))
    except GitError:
        uncommitted = False
    return PushState(branch=branch, upstream=upstream, ahead=ahead, uncommitted=uncommitted)


def push_warnings(state: PushState) -> list[str]:
    """What the cloud job will not see, in the user's words; empty if all is pushed."""
    warnings = []
    if state.upstream is None:
        warnings.append(
            f"branch '{state.branch}' has no upstream: the cloud job clones it from the "
            f"remote, where it may not exist (push it: git push -u origin {state.branch})"
        )
    elif state.ahead:
        commits = "commit" if state.ahead == 1 else "commits"
        warnings.append(
            f"branch '{state.branch}' is {state.ahead} {commits} ahead of {state.upstream}: "
            f"the cloud job will not see them (push first: git push)"
        )
    if state.uncommitted:
        warnings.append(
            "you have uncommitted changes: the cloud job starts from the pushed branch "
            "and will not see them"
        )
    return warnings
