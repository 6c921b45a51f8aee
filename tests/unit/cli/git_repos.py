"""Real git repositories for the tests: a bare "remote" and a clone of it."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest


def git(cwd: Path, *args: str) -> str:
    completed = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=30
    )
    assert completed.returncode == 0, f"git {' '.join(args)}: {completed.stderr}"
    return completed.stdout.strip()


def isolate_git(monkeypatch: pytest.MonkeyPatch, home: Path) -> dict[str, str]:
    """Git ignores the machine's and user's configuration; commits get a fixed identity.

    Returns the variables, for subprocesses started with their own environment.
    """
    config = home / "gitconfig"
    config.write_text(
        "[user]\n\tname = Test User\n\temail = test@example.com\n"
        "[init]\n\tdefaultBranch = main\n"
        "[advice]\n\tdetachedHead = false\n"
    )
    variables = {"GIT_CONFIG_GLOBAL": str(config), "GIT_CONFIG_NOSYSTEM": "1"}
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    return variables


@dataclass(frozen=True)
class Clone:
    remote: Path
    """The bare repository standing in for the hosting service."""
    work: Path
    """A clone with `main` pushed and tracking `origin/main`."""

    def commit(self, name: str = "change.txt", text: str = "change\n") -> None:
        (self.work / name).write_text(text)
        git(self.work, "add", name)
        git(self.work, "commit", "-q", "-m", f"add {name}")


def make_clone(root: Path) -> Clone:
    remote = root / "remote.git"
    work = root / "work"
    git(root, "init", "-q", "--bare", str(remote))
    git(root, "clone", "-q", str(remote), str(work))
    clone = Clone(remote, work)
    clone.commit("README.md", "hello\n")
    git(work, "push", "-q", "-u", "origin", "main")
    return clone
