"""Defaults read from a real git checkout, and the warnings about unpushed work."""

from __future__ import annotations

from pathlib import Path

import pytest

from ckrv.cli.errors import UsageError
from ckrv.cli.git import PushState, current_branch, origin_url, push_state, push_warnings
from tests.unit.cli.git_repos import Clone, git, isolate_git


def test_origin_and_branch_come_from_the_checkout(clone: Clone) -> None:
    assert origin_url(clone.work) == str(clone.remote)
    assert current_branch(clone.work) == "main"
    git(clone.work, "checkout", "-q", "-b", "feature/login")
    assert current_branch(clone.work) == "feature/login"


def test_outside_a_repository_the_error_asks_for_the_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    isolate_git(monkeypatch, tmp_path)
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(UsageError, match="no --repo given") as raised:
        origin_url(plain)
    assert raised.value.hint is not None
    assert "--repo" in raised.value.hint
    with pytest.raises(UsageError, match="no --base-branch given"):
        current_branch(plain)


def test_a_repository_without_origin_asks_for_repo(clone: Clone) -> None:
    git(clone.work, "remote", "rename", "origin", "upstream")
    with pytest.raises(UsageError, match="no --repo given"):
        origin_url(clone.work)


def test_a_detached_head_asks_for_base_branch(clone: Clone) -> None:
    git(clone.work, "checkout", "-q", "--detach")
    with pytest.raises(UsageError, match="HEAD is detached"):
        current_branch(clone.work)


def test_a_pushed_branch_has_nothing_to_warn_about(clone: Clone) -> None:
    state = push_state(clone.work, "main")
    assert state == PushState(branch="main", upstream="origin/main", ahead=0, uncommitted=False)
    assert push_warnings(state) == []


def test_commits_not_pushed_are_counted(clone: Clone) -> None:
    clone.commit("one.txt")
    clone.commit("two.txt")
    state = push_state(clone.work, "main")
    assert state is not None
    assert (state.upstream, state.ahead) == ("origin/main", 2)
    (warning,) = push_warnings(state)
    assert warning.startswith("branch 'main' is 2 commits ahead of origin/main")
    assert "git push" in warning


def test_after_pushing_the_warning_is_gone(clone: Clone) -> None:
    clone.commit()
    git(clone.work, "push", "-q")
    state = push_state(clone.work, "main")
    assert state is not None
    assert push_warnings(state) == []


def test_a_branch_without_upstream_is_reported(clone: Clone) -> None:
    git(clone.work, "checkout", "-q", "-b", "feature")
    state = push_state(clone.work, "feature")
    assert state == PushState(branch="feature", upstream=None, ahead=0, uncommitted=False)
    (warning,) = push_warnings(state)
    assert "has no upstream" in warning
    assert "git push -u origin feature" in warning


def test_uncommitted_changes_of_the_current_branch_are_reported(clone: Clone) -> None:
    (clone.work / "README.md").write_text("edited\n")
    state = push_state(clone.work, "main")
    assert state is not None
    assert state.uncommitted
    (warning,) = push_warnings(state)
    assert "uncommitted changes" in warning
    # Another branch than the checked-out one: the working tree says nothing about it.
    git(clone.work, "branch", "other")
    other = push_state(clone.work, "other")
    assert other is not None
    assert not other.uncommitted


def test_untracked_files_are_not_uncommitted_changes(clone: Clone) -> None:
    (clone.work / "notes.txt").write_text("scratch\n")
    state = push_state(clone.work, "main")
    assert state is not None
    assert not state.uncommitted


def test_a_branch_that_is_not_local_is_not_judged(clone: Clone) -> None:
    assert push_state(clone.work, "release") is None
