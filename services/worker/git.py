"""Git in the workload: clone the base branch, branch off, commit, and package the result.

Git runs with a configuration of its own (no system or user config files, no credential
helper but the clone's, no prompts, no hooks) in the C locale, so what it does and what it
says do not depend on the image it runs in. Every command is bounded by the job's deadline.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ckrv.schemas.git import GitInputError, validate_repository_url
from ckrv.services.worker.outcome import InfrastructureFailure, JobFailure
from ckrv.services.worker.processes import Completed, Deadline, run_captured

AUTHOR_NAME = "Chakravarti Cloud"
AUTHOR_EMAIL = "jobs@ckrv.dev"
# What git's own messages may be cut to in a log line or a job's error.
_MAX_MESSAGE_CHARACTERS = 1000
# Inherited variables git may keep: where to find the CA certificates of an https server.
_INHERITED_GIT_VARIABLES = frozenset({"GIT_SSL_CAINFO", "GIT_SSL_CAPATH"})
# Pauses before the second and third try of a clone that failed on the way, not on its merits.
CLONE_RETRY_DELAYS_SECONDS = (1.0, 4.0)
# Git's and curl's words (LC_ALL=C) for a failure of the connection or of the server, which
# another try may not meet; refusals (authentication, missing repository) are not among them.
_TRANSIENT_CLONE_FAILURES = (
    "RPC failed",
    "gnutls_handshake() failed",
    "SSL_ERROR_SYSCALL",
    "unexpected TLS packet",
    "Connection reset by peer",
    "Connection timed out",
    "Operation timed out",
    "Failed to connect to",
    "the remote end hung up unexpectedly",
    "early EOF",
    "The requested URL returned error: 500",
    "The requested URL returned error: 502",
    "The requested URL returned error: 503",
    "The requested URL returned error: 504",
    "kex_exchange_identification",
    "Connection closed by remote host",
)

_CONFIG = f"""\
[user]
\tname = {AUTHOR_NAME}
\temail = {AUTHOR_EMAIL}
[init]
\tdefaultBranch = main
[advice]
\tdetachedHead = false
[commit]
\tgpgSign = false
[core]
\thooksPath = /dev/null
"""


def git_message(stderr: str) -> str:
    """Git's complaint on one line; its end when long, where git and ssh give the verdict."""
    message = " ".join(
        line.strip()
        for line in stderr.splitlines()
        if line.strip(" @")  # ssh's @@@ banners
    )
    if len(message) > _MAX_MESSAGE_CHARACTERS:
        message = "…" + message[-_MAX_MESSAGE_CHARACTERS:]
    return message or "git gave no reason"


def git_environment(config_file: Path, inherited: Mapping[str, str]) -> dict[str, str]:
    """The environment of every git command: the worker's, minus what would steer git."""
    environment = {
        name: value
        for name, value in inherited.items()
        if (not name.startswith("GIT_") or name in _INHERITED_GIT_VARIABLES)
        and name not in {"SSH_ASKPASS", "SSH_AUTH_SOCK"}
    }
    environment.update(
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=str(config_file),
        GIT_TERMINAL_PROMPT="0",
        LC_ALL="C",
    )
    return environment


def is_transient_clone_failure(stderr: str) -> bool:
    """Whether a failed clone may succeed when tried again: the network or the server failed."""
    return any(failure in stderr for failure in _TRANSIENT_CLONE_FAILURES)


@dataclass(frozen=True)
class DiffStats:
    files_changed: tuple[str, ...]
    insertions: int
    deletions: int


def parse_numstat(output: str) -> DiffStats:
    """`git diff --numstat -z --no-renames`: `<added>\\t<deleted>\\t<path>\\0` per file.

    Binary files count `-` lines, taken as 0.
    """
    files, insertions, deletions = [], 0, 0
    for record in output.split("\0"):
        if not record:
            continue
        added, deleted, path = record.split("\t", 2)
        files.append(path)
        insertions += int(added) if added.isdigit() else 0
        deletions += int(deleted) if deleted.isdigit() else 0
    return DiffStats(tuple(files), insertions, deletions)


class Git:
    """Runs git for one job: with its configuration (written to `config_file`), before its
    deadline."""

    def __init__(self, config_file: Path, deadline: Deadline) -> None:
        self.deadline = deadline
        config_file.write_text(_CONFIG)
        self.environment = git_environment(config_file, os.environ)

    def run(
        self, *args: str, cwd: Path, extra_environment: Mapping[str, str] | None = None
    ) -> Completed:
        return run_captured(
            ["git", *args],
            cwd=cwd,
            env={**self.environment, **(extra_environment or {})},
            deadline=self.deadline,
        )

    def clone(
        self,
        url: str,
        branch: str,
        destination: Path,
        *,
        access: Mapping[str, str],
        allow_local: bool,
        on_retry: Callable[[str], None],
        retry_delays: Sequence[float] = CLONE_RETRY_DELAYS_SECONDS,
    ) -> Repository:
        """Clone `branch` of `url` alone; `JobFailure` if refused, unreachable or missing.

        A clone that fails on the way (a dropped connection, a server error) is tried again
        after each of `retry_delays`, telling `on_retry` why, as long as the deadline allows.
        """
        try:
            validate_repository_url(url, allow_local=allow_local)
        except GitInputError as error:
            raise JobFailure("clone_refused", f"cannot clone {url}: {error}") from error
        for delay in (*retry_delays, None):
            cloned = self.run(
                "clone",
                "--quiet",
                "--no-tags",
                "--single-branch",
                "--branch",
                branch,
                "--",
                url,
                str(destination),
                cwd=destination.parent,
                extra_environment=access,
            )
            if cloned.returncode == 0:
                return Repository(self, destination)
            # Under LC_ALL=C this is git's wording for a branch the remote does not have.
            if f"Remote branch {branch} not found" in cloned.stderr:
                raise JobFailure(
                    "branch_not_found", f"the repository {url} has no branch {branch!r}"
                )
            message = f"cannot clone {url}: {git_message(cloned.stderr)}"
            if delay is None or not is_transient_clone_failure(cloned.stderr):
                break
            if self.deadline.remaining() <= delay:
                break
            on_retry(f"{message}; trying again in {delay:g} s")
            shutil.rmtree(destination, ignore_errors=True)
            time.sleep(delay)
        raise JobFailure("clone_failed", message)


class Repository:
    """The job's clone."""

    def __init__(self, git: Git, path: Path) -> None:
        self.git = git
        self.path = path

    def output(self, *args: str) -> str:
        """What `git <args>` prints; `InfrastructureFailure` if it fails."""
        completed = self.git.run(*args, cwd=self.path)
        if completed.returncode != 0:
            raise InfrastructureFailure(
                "git_failed", f"`git {args[0]}` failed: {git_message(completed.stderr)}"
            )
        return completed.stdout

    def head(self) -> str:
        return self.output("rev-parse", "--verify", "HEAD").strip()

    def current_branch(self) -> str | None:
        completed = self.git.run("symbolic-ref", "--quiet", "--short", "HEAD", cwd=self.path)
        return completed.stdout.strip() if completed.returncode == 0 else None

    def create_branch(self, name: str) -> None:
        self.output("switch", "--quiet", "--create", name)

    def commit_all(self, message: str) -> bool:
        """Commit every change in the working tree (ignored files aside); False if none."""
        self.output("add", "--all")
        staged = self.git.run("diff", "--cached", "--quiet", cwd=self.path)
        if staged.returncode == 0:
            return False
        self.output("commit", "--quiet", "--no-verify", "--message", message)
        return True

    def diff_stats(self, base: str, head: str) -> DiffStats:
        return parse_numstat(self.output("diff", "--numstat", "-z", "--no-renames", base, head))

    def write_diff(self, base: str, head: str, destination: Path) -> None:
        """The patch from `base` to `head`, binary files included, as `git apply` takes it."""
        self.output(
            "diff", "--binary", "--no-color", "--no-ext-diff", f"--output={destination}", base, head
        )

    def write_bundle(self, branch: str, destination: Path) -> None:
        """A bundle of `branch` with its whole history, checked with `git bundle verify`."""
        self.output("bundle", "create", "--quiet", str(destination), f"refs/heads/{branch}")
        self.output("bundle", "verify", "--quiet", str(destination))
