"""How git gets the credential, and the git environment and output the worker relies on."""

from __future__ import annotations

import shlex
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ckrv.services.worker.clone_access import (
    PAT_USER_NAMES,
    clone_access,
    pat_environment,
    ssh_command,
    uses_ssh,
)
from ckrv.services.worker.git import git_environment, git_message, parse_numstat
from ckrv.services.worker.outcome import JobFailure
from tests.unit.worker.worker_runs import make_job, spec_text

TOKEN = "glpat-abcdefghijklmnop0123"


def fill_credential(environment: dict[str, str], request: str) -> dict[str, str]:
    """What git's credential machinery answers for `request` with these settings."""
    completed = subprocess.run(
        ["git", "credential", "fill"],
        input=request,
        env={
            "PATH": "/usr/bin:/bin",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "GIT_TERMINAL_PROMPT": "0",
            **environment,
        },
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return dict(line.split("=", 1) for line in completed.stdout.splitlines())


def test_git_gets_the_token_from_the_helper_and_the_providers_user_name(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    environment = pat_environment(token_file, "gitlab")

    answer = fill_credential(environment, "protocol=https\nhost=gitlab.com\n\n")

    assert answer["username"] == PAT_USER_NAMES["gitlab"] == "oauth2"
    assert answer["password"] == TOKEN
    assert TOKEN not in "".join(environment.values())


def test_a_user_name_in_the_url_wins_over_the_providers(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)

    answer = fill_credential(
        pat_environment(token_file, "bitbucket"),
        "protocol=https\nhost=bitbucket.org\nusername=alice\n\n",
    )

    assert (answer["username"], answer["password"]) == ("alice", TOKEN)


def job_for(url: str, **fields: Any) -> Any:
    return make_job(git_repo_url=url, spec_content=spec_text(["true"]), **fields)


def test_the_credential_files_are_private_and_gone_after_the_clone(tmp_path: Path) -> None:
    job = job_for(
        "git@github.com:acme/app.git",
        credential={"provider": "github", "credential_type": "deploy_key"},
        ssh_host_keys={"policy": "strict", "known_hosts": "github.com ssh-ed25519 AAAA\n"},
    )
    private = tmp_path / "access"

    with clone_access(job, "-----BEGIN KEY-----\nabc\n-----END KEY-----", private) as env:
        assert stat.S_IMODE(private.stat().st_mode) == 0o700
        key = private / "deploy_key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert key.read_text().endswith("-----END KEY-----\n")
        assert (private / "known_hosts").read_text() == "github.com ssh-ed25519 AAAA\n"
        command = shlex.split(env["GIT_SSH_COMMAND"])
        assert command[command.index("-i") + 1] == str(key)
        assert "StrictHostKeyChecking=yes" in command

    assert not private.exists()


def test_a_public_https_repository_needs_nothing(tmp_path: Path) -> None:
    with clone_access(job_for("https://github.com/acme/app.git"), None, tmp_path / "a") as env:
        assert env == {}


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("ssh://git@github.com/acme/app.git", "pat"),
        ("https://github.com/acme/app.git", "deploy_key"),
    ],
)
def test_a_credential_for_the_other_transport_fails_the_job(
    url: str, kind: str, tmp_path: Path
) -> None:
    job = job_for(url, credential={"provider": "github", "credential_type": kind})

    with (
        pytest.raises(JobFailure, match="but the repository URL") as raised,
        clone_access(job, "value", tmp_path / "access"),
    ):
        pass
    assert raised.value.reason == "credential_mismatch"
    assert not (tmp_path / "access").exists()


def test_ssh_runs_without_config_agent_or_prompts(tmp_path: Path) -> None:
    strict = shlex.split(ssh_command(known_hosts_file=tmp_path / "kh", strict=True))
    trusting = shlex.split(ssh_command(known_hosts_file=tmp_path / "kh", strict=False))

    assert strict[:3] == ["ssh", "-F", "/dev/null"]
    assert {"BatchMode=yes", "IdentitiesOnly=yes", f"UserKnownHostsFile={tmp_path}/kh"} <= set(
        strict
    )
    assert "StrictHostKeyChecking=yes" in strict
    assert "StrictHostKeyChecking=accept-new" in trusting
    assert "-i" not in strict


@pytest.mark.parametrize(
    ("url", "ssh"),
    [
        ("git@github.com:acme/app.git", True),
        ("ssh://git@host:2222/app.git", True),
        ("https://github.com/acme/app.git", False),
        ("/srv/git/app.git", False),
    ],
)
def test_which_urls_go_over_ssh(url: str, ssh: bool) -> None:
    assert uses_ssh(url) is ssh


def test_git_keeps_only_the_ca_settings_of_the_inherited_environment(tmp_path: Path) -> None:
    environment = git_environment(
        tmp_path / "gitconfig",
        {
            "PATH": "/usr/bin",
            "GIT_DIR": "/elsewhere",
            "GIT_ASKPASS": "/usr/bin/ksshaskpass",
            "GIT_SSL_CAINFO": "/etc/ca.pem",
            "SSH_AUTH_SOCK": "/run/agent",
        },
    )

    assert environment["GIT_SSL_CAINFO"] == "/etc/ca.pem"
    assert environment["GIT_CONFIG_GLOBAL"] == str(tmp_path / "gitconfig")
    assert (environment["GIT_TERMINAL_PROMPT"], environment["LC_ALL"]) == ("0", "C")
    assert not {"GIT_DIR", "GIT_ASKPASS", "SSH_AUTH_SOCK"} & environment.keys()


def test_numstat_counts_lines_and_lists_paths_binary_files_included() -> None:
    output = "3\t1\tsrc/app.py\0-\t-\tlogo.png\0" + "1\t0\tname with\ttab.txt\0"

    stats = parse_numstat(output)

    assert stats.files_changed == ("src/app.py", "logo.png", "name with\ttab.txt")
    assert (stats.insertions, stats.deletions) == (4, 1)


def test_git_messages_lose_sshs_banners_and_keep_their_end() -> None:
    stderr = (
        "@@@@@@@@\n@ WARNING @\n@@@@@@@@\n" + "noise\n" * 400 + "Host key verification failed.\n"
    )

    message = git_message(stderr)

    assert "@" not in message
    assert message.endswith("Host key verification failed.")
    assert message.startswith("…")
    assert git_message("") == "git gave no reason"
