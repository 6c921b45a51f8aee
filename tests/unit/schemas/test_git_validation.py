"""Branch names as `git check-ref-format --branch` judges them, and repository URLs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ckrv.schemas.git import (
    MAX_BRANCH_LENGTH,
    GitInputError,
    branch_name_problem,
    validate_branch_name,
    validate_repository_url,
)

GIT = shutil.which("git")
needs_git = pytest.mark.skipif(GIT is None, reason="git is not installed")

VALID_BRANCHES = (
    "main",
    "feature/x",
    "release/1.2.3",
    "dependabot/npm_and_yarn/lodash-4.17.21",
    "x-",
    "a/-b",
    "a.b",
    "lock",
    "a.locka",
    "foo./bar",
    "refs/heads/x",
    "head",
    "HEAD/x",
    "x/HEAD",
    "@",
    "@@",
    "@a",
    "a@b",
    "fünf",
    "功能/登录",
    "🙂",
    "zero\u200bwidth",
    "a{b}",
    "a#b",
    "a'b",
    'a"b',
    "a!b+c=d,e;f|g<h>i$j%k&l",
    "x" * MAX_BRANCH_LENGTH,
)

INVALID_BRANCHES = (
    "",
    "HEAD",
    "-",
    "-x",
    "--force",
    ".",
    "..",
    ".a",
    "a/.b",
    "a/./b",
    "a.",
    "a.lock",
    "a/b.lock",
    "a.lock/b",
    "x.lock.lock",
    "a..b",
    "a//b",
    "/a",
    "a/",
    "@{-1}",
    "a@{b",
    "a b",
    "a~b",
    "a^b",
    "a:b",
    "a?b",
    "a*b",
    "a[b",
    "a\\b",
    "a\tb",
    "a\x01b",
    "a\x7fb",
    "main\n",
)


def git_accepts(name: str, cwd: Path) -> bool:
    assert GIT is not None
    # Outside any repository, so `@` and `@{-1}` are judged as names, not expanded.
    environment = {**os.environ, "GIT_CEILING_DIRECTORIES": str(cwd.parent)}
    completed = subprocess.run(
        [GIT, "check-ref-format", "--branch", name],
        cwd=cwd,
        env=environment,
        capture_output=True,
        check=False,
    )
    return completed.returncode == 0


@needs_git
@pytest.mark.parametrize("name", VALID_BRANCHES + INVALID_BRANCHES)
def test_branch_names_are_judged_as_git_judges_them(name: str, tmp_path: Path) -> None:
    assert (branch_name_problem(name) is None) == git_accepts(name, tmp_path), name


@pytest.mark.parametrize("name", VALID_BRANCHES)
def test_valid_branch_names_pass(name: str) -> None:
    assert validate_branch_name(name) == name


@pytest.mark.parametrize("name", INVALID_BRANCHES)
def test_invalid_branch_names_are_refused_with_the_reason(name: str) -> None:
    with pytest.raises(GitInputError, match="is not a valid branch name: it "):
        validate_branch_name(name)


@needs_git
@pytest.mark.parametrize(
    "name", ["x" * (MAX_BRANCH_LENGTH + 1), "a" * 200 + "/" + "b" * 200], ids=["256", "401"]
)
def test_names_longer_than_the_cap_are_refused_though_git_takes_them(
    name: str, tmp_path: Path
) -> None:
    # A deliberate limit of the service: git has none (the file system has one per part).
    assert git_accepts(name, tmp_path)
    assert branch_name_problem(name) == f"is longer than {MAX_BRANCH_LENGTH} characters"


ACCEPTED_URLS = (
    "https://github.com/acme/app.git",
    "https://github.com/acme/app",
    "https://gitlab.example.com/group/sub/app.git",
    "https://github.com:443/acme/app.git",
    "https://x-token@bitbucket.org/acme/app.git",
    "HTTPS://GITHUB.COM/acme/app.git",
    "ssh://git@github.com/acme/app.git",
    "ssh://git@github.com:2222/acme/app.git",
    "ssh://github.com/acme/app.git",
    "git@github.com:acme/app.git",
    "deploy.bot@git.example.com:acme/app.git",
)

REFUSED_URLS = {
    "": "is empty",
    "   ": "is empty",
    "file:///srv/git/app.git": "local paths",
    "/srv/git/app.git": "local paths",
    "./app": "local paths",
    "../app.git": "local paths",
    "~/src/app": "local paths",
    "app": "local paths",
    "example.com/acme/app.git": "local paths",
    "http://github.com/acme/app.git": "http repository URLs are refused",
    "ftp://example.com/acme/app.git": "must be an https URL",
    "git://github.com/acme/app.git": "must be an https URL",
    "svn+ssh://example.com/repo": "must be an https URL",
    "https://github.com": "needs a host and a path",
    "https://github.com/": "needs a host and a path",
    "https:///acme/app.git": "needs a host and a path",
    "ssh://git@github.com": "needs a host and a path",
    "ssh://git@github.com/": "needs a host and a path",
    "https://me:hunter2@github.com/acme/app.git": "put no credentials",
    "https://me:@github.com/acme/app.git": "put no credentials",
    "ssh://git:hunter2@github.com/acme/app.git": "put no credentials",
}


@pytest.mark.parametrize("url", ACCEPTED_URLS)
def test_https_and_ssh_urls_are_accepted(url: str) -> None:
    assert validate_repository_url(url) == url


def test_surrounding_spaces_are_dropped() -> None:
    assert validate_repository_url("  https://github.com/acme/app.git\n") == (
        "https://github.com/acme/app.git"
    )


@pytest.mark.parametrize(("url", "reason"), REFUSED_URLS.items(), ids=list(REFUSED_URLS))
def test_other_urls_are_refused_with_the_reason(url: str, reason: str) -> None:
    with pytest.raises(GitInputError, match=reason) as refused:
        validate_repository_url(url)
    assert "hunter2" not in str(refused.value)


@pytest.mark.parametrize("url", ["file:///srv/git/app.git", "/srv/git/app.git"])
def test_local_repositories_only_when_allowed(url: str) -> None:
    assert validate_repository_url(url, allow_local=True) == url
    with pytest.raises(GitInputError):
        validate_repository_url(url)


@pytest.mark.parametrize("url", ["http://github.com/acme/app.git", "./app", "ftp://x/y"])
def test_allowing_local_repositories_allows_nothing_else(url: str) -> None:
    with pytest.raises(GitInputError):
        validate_repository_url(url, allow_local=True)
