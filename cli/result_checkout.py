"""A job's result in the local repository: its bundle fetched into a branch, its patch applied to
the working tree, or its branch checked out in a worktree of its own.

Only `apply_patch` changes the working tree, and all or nothing: `git apply --check --3way`
says a patch applies even when the merge would leave conflict markers, so the patch is
first applied to a scratch copy of the index, and only one that applies there without
conflict goes on to the real index and files (where git applies all of it or none).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from ckrv.cli.errors import UsageError
from ckrv.cli.git import GitError, run_git

# Fetching a large bundle or checking out a large tree takes longer than a quick query.
LARGE_OPERATION_TIMEOUT_SECONDS = 600.0


class PatchDoesNotApply(GitError):
    """The patch conflicts with the working tree (`conflicted` names where) or does not fit it."""

    def __init__(self, message: str, conflicted: list[str]) -> None:
        super().__init__(message)
        self.conflicted = conflicted


def repository_root(cwd: Path) -> Path:
    """The top folder of the working tree `cwd` is in; `UsageError` outside a repository."""
    try:
        return Path(run_git(cwd, "rev-parse", "--show-toplevel"))
    except GitError as error:
        raise UsageError(
            f"not inside a git repository: {error}",
            hint="Run it in a clone of the job's repository; `ckrv diff JOB_ID > FILE` "
            "gives the patch anywhere.",
        ) from error


def has_uncommitted_changes(root: Path) -> bool:
    """Whether tracked files differ from HEAD, in the working tree or the index."""
    return bool(run_git(root, "status", "--porcelain", "--untracked-files=no"))


def branch_exists(root: Path, branch: str) -> bool:
    try:
        run_git(root, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}")
    except GitError:
        return False
    return True


def fetch_bundle(root: Path, bundle: Path, branch: str) -> str:
    """Fetch `branch` from `bundle` into the local branch of that name, created or moved
    forward (never rewound); the branch's commit. The working tree is not touched."""
    ref = f"refs/heads/{branch}"
    run_git(
        root,
        "fetch",
        "--quiet",
        "--no-write-fetch-head",
        str(bundle),
        f"{ref}:{ref}",
        timeout=LARGE_OPERATION_TIMEOUT_SECONDS,
    )
    return run_git(root, "rev-parse", ref)


def diff_stat(root: Path, base: str, head: str) -> str:
    """`git diff --stat` from `base` to `head`: one line per file and a summary."""
    return run_git(root, "diff", "--stat", base, head)


def patch_stat(cwd: Path, patch: Path, *, numeric: bool = False) -> str:
    """The diffstat of a patch file (`--numstat` with `numeric`); needs no repository."""
    return run_git(cwd, "apply", "--numstat" if numeric else "--stat", str(patch))


def apply_patch(root: Path, patch: Path) -> None:
    """Apply `patch` to the working tree and the index with a 3-way merge; if any part of it
    does not apply cleanly, nothing changes and `PatchDoesNotApply` says why."""
    index = Path(run_git(root, "rev-parse", "--path-format=absolute", "--git-path", "index"))
    with tempfile.TemporaryDirectory(prefix="ckrv-apply-") as scratch:
        scratch_index = {"GIT_INDEX_FILE": str(Path(scratch) / "index")}
        if index.exists():
            shutil.copyfile(index, scratch_index["GIT_INDEX_FILE"])
        try:
            run_git(root, "apply", "--3way", "--cached", str(patch), env=scratch_index)
        except GitError as error:
            unmerged = run_git(root, "ls-files", "--unmerged", env=scratch_index)
            # `<mode> <object> <stage>\t<path>`, a line per stage of each conflicted path.
            conflicted = sorted({line.split("\t", 1)[1] for line in unmerged.splitlines()})
            raise PatchDoesNotApply(str(error), conflicted) from error
    try:
        run_git(root, "apply", "--3way", str(patch))
    except GitError as error:
        raise PatchDoesNotApply(str(error), []) from error


def add_worktree(root: Path, path: Path, branch: str) -> None:
    """Check `branch` out in a new worktree at `path`."""
    run_git(
        root,
        "worktree",
        "add",
        "--quiet",
        str(path),
        branch,
        timeout=LARGE_OPERATION_TIMEOUT_SECONDS,
    )
