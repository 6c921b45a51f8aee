"""What `ckrv pull` does to a real repository: a bundle into a branch, a patch all or nothing.

The job's result is made as the worker makes it: a branch committed on top of
`main`, bundled, and diffed with `git diff --binary`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from ckrv.cli.commands.pull import fetch_result_branch
from ckrv.cli.errors import CliError, UsageError
from ckrv.cli.result_checkout import (
    PatchDoesNotApply,
    add_worktree,
    apply_patch,
    diff_stat,
    fetch_bundle,
    repository_root,
)
from tests.unit.cli.git_repos import Clone, git

BRANCH = "ckrv/3f2a1b2c"


@dataclass(frozen=True)
class JobResult:
    bundle: Path
    patch: Path
    head: str


def job_result(clone: Clone, folder: Path) -> JobResult:
    """What a job leaves: README.md changed and NOTES.md added on BRANCH, bundled and diffed;
    the branch itself is gone from the clone, as it is from the user's."""
    work = clone.work
    git(work, "switch", "--quiet", "--create", BRANCH)
    (work / "README.md").write_text("hello, world\n")
    (work / "NOTES.md").write_text("notes\n")
    git(work, "add", "--all")
    git(work, "commit", "--quiet", "-m", "the job's work")
    head = git(work, "rev-parse", "HEAD")
    bundle, patch = folder / "repo.bundle", folder / "diff.patch"
    git(work, "bundle", "create", "--quiet", str(bundle), f"refs/heads/{BRANCH}")
    git(work, "diff", "--binary", f"--output={patch}", "main", BRANCH)
    git(work, "switch", "--quiet", "main")
    git(work, "branch", "--quiet", "-D", BRANCH)
    return JobResult(bundle, patch, head)


@pytest.fixture
def result(clone: Clone, tmp_path: Path) -> JobResult:
    folder = tmp_path / "result"
    folder.mkdir()
    return job_result(clone, folder)


def state(work: Path) -> tuple[str, str, str, str]:
    """HEAD, the status, and the two files the job touches: what "unchanged" means."""
    notes = work / "NOTES.md"
    return (
        git(work, "rev-parse", "HEAD"),
        git(work, "status", "--porcelain", "--untracked-files=all"),
        (work / "README.md").read_text(),
        notes.read_text() if notes.exists() else "",
    )


def test_the_bundle_becomes_a_branch_and_the_working_tree_stays(
    clone: Clone, result: JobResult
) -> None:
    before = state(clone.work)

    commit = fetch_bundle(clone.work, result.bundle, BRANCH)

    assert commit == result.head
    assert git(clone.work, "rev-parse", BRANCH) == result.head
    assert state(clone.work) == before
    assert diff_stat(clone.work, "main", BRANCH).splitlines() == [
        " NOTES.md  | 1 +",
        " README.md | 2 +-",
        " 2 files changed, 2 insertions(+), 1 deletion(-)",
    ]
    # Pulling again changes nothing and is no error.
    assert fetch_bundle(clone.work, result.bundle, BRANCH) == result.head


def test_a_different_branch_of_that_name_is_not_overwritten(
    clone: Clone, result: JobResult
) -> None:
    clone.commit("mine.txt")
    git(clone.work, "branch", BRANCH)

    with pytest.raises(CliError) as raised:
        fetch_result_branch(clone.work, result.bundle, BRANCH)

    assert raised.value.code == "branch_exists"
    assert f"git branch -m {BRANCH} {BRANCH}-mine" in (raised.value.hint or "")
    assert git(clone.work, "rev-parse", BRANCH) == git(clone.work, "rev-parse", "HEAD")


def test_a_clean_patch_is_applied_to_the_working_tree_and_index(
    clone: Clone, result: JobResult
) -> None:
    fetch_bundle(clone.work, result.bundle, BRANCH)

    apply_patch(clone.work, result.patch)

    assert (clone.work / "README.md").read_text() == "hello, world\n"
    assert (clone.work / "NOTES.md").read_text() == "notes\n"
    assert git(clone.work, "status", "--porcelain").splitlines() == ["A  NOTES.md", "M  README.md"]


def test_a_conflicting_patch_changes_nothing_and_names_the_conflicts(
    clone: Clone, result: JobResult
) -> None:
    fetch_bundle(clone.work, result.bundle, BRANCH)
    clone.commit("README.md", "my own greeting\n")
    before = state(clone.work)

    with pytest.raises(PatchDoesNotApply) as raised:
        apply_patch(clone.work, result.patch)

    assert raised.value.conflicted == ["README.md"]
    assert state(clone.work) == before


def test_uncommitted_edits_elsewhere_stay_and_the_patch_applies(
    clone: Clone, result: JobResult
) -> None:
    clone.commit("other.txt", "other\n")
    (clone.work / "other.txt").write_text("edited, not committed\n")

    apply_patch(clone.work, result.patch)

    assert (clone.work / "other.txt").read_text() == "edited, not committed\n"
    assert (clone.work / "README.md").read_text() == "hello, world\n"


def test_uncommitted_edits_to_a_patched_file_stop_the_whole_patch(
    clone: Clone, result: JobResult
) -> None:
    (clone.work / "README.md").write_text("hello\nand an edit of mine\n")
    before = state(clone.work)

    with pytest.raises(PatchDoesNotApply):
        apply_patch(clone.work, result.patch)

    assert state(clone.work) == before


def test_the_branch_checks_out_in_a_new_worktree(
    clone: Clone, result: JobResult, tmp_path: Path
) -> None:
    fetch_bundle(clone.work, result.bundle, BRANCH)

    add_worktree(clone.work, tmp_path / "result-tree", BRANCH)

    assert (tmp_path / "result-tree" / "NOTES.md").read_text() == "notes\n"
    assert git(tmp_path / "result-tree", "rev-parse", "--abbrev-ref", "HEAD") == BRANCH
    assert git(clone.work, "rev-parse", "--abbrev-ref", "HEAD") == "main"


def test_the_repository_is_found_from_a_subfolder_and_missed_outside(
    clone: Clone, tmp_path: Path
) -> None:
    (clone.work / "src").mkdir()

    assert repository_root(clone.work / "src") == clone.work.resolve()
    with pytest.raises(UsageError, match="not inside a git repository"):
        repository_root(tmp_path)
