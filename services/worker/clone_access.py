"""How git reaches the repository with the job's credential, without it leaking anywhere.

- A PAT (https) is handed over by a credential helper given to git through the environment
  (`GIT_CONFIG_COUNT`/`GIT_CONFIG_KEY_n`): a shell function that reads the token from a
  private file and prints it with the shell's `printf` builtin. The token is never in a URL,
  a command line, an environment variable or a config file.
- A deploy key (ssh) is a private file (mode 0600) named by `GIT_SSH_COMMAND`, with
  `IdentitiesOnly=yes` and the job's host key policy (strict with the given known_hosts lines,
  or accept-new).

The files live in a private folder that is deleted as soon as the clone is done, before any
agent runs.
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from ckrv.schemas.git import SCP_LIKE
from ckrv.services.worker.job_input import GitProvider, WorkerInput
from ckrv.services.worker.outcome import JobFailure

# The user name each host expects beside an access token; a user name in the URL wins.
PAT_USER_NAMES: dict[GitProvider, str] = {
    "github": "x-access-token",
    "gitlab": "oauth2",
    "bitbucket": "x-token-auth",
    "generic": "git",
}


def uses_ssh(url: str) -> bool:
    """Whether git reaches `url` over ssh (`ssh://…` or the scp-like `user@host:path`)."""
    return bool(SCP_LIKE.match(url)) or urlsplit(url).scheme.lower() == "ssh"


def _private_file(path: Path, content: str) -> Path:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(content)
    return path


def _config_environment(settings: dict[str, str]) -> dict[str, str]:
    """Git configuration passed through the environment, as `git -c` would without argv."""
    environment = {"GIT_CONFIG_COUNT": str(len(settings))}
    for index, (key, value) in enumerate(settings.items()):
        environment[f"GIT_CONFIG_KEY_{index}"] = key
        environment[f"GIT_CONFIG_VALUE_{index}"] = value
    return environment


def pat_environment(token_file: Path, provider: GitProvider) -> dict[str, str]:
    # `printf` is a shell builtin: the token is printed without ever being a process argument.
    read_token = f"cat {shlex.quote(str(token_file))}"
    helper = f'!f() {{ test "$1" = get && printf "password=%s\\n" "$({read_token})"; }}; f'
    return _config_environment(
        {"credential.username": PAT_USER_NAMES[provider], "credential.helper": helper}
    )


def ssh_command(*, known_hosts_file: Path, strict: bool, identity_file: Path | None = None) -> str:
    """The `GIT_SSH_COMMAND`: no user or system ssh config, no agent, no prompts."""
    options = [
        "-F",
        "/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        f"UserKnownHostsFile={known_hosts_file}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        f"StrictHostKeyChecking={'yes' if strict else 'accept-new'}",
    ]
    if identity_file is not None:
        options += ["-i", str(identity_file)]
    return shlex.join(["ssh", *options])


def _ssh_environment(job: WorkerInput, private_dir: Path, deploy_key: str | None) -> dict[str, str]:
    host_keys = job.ssh_host_keys
    known_hosts = _private_file(private_dir / "known_hosts", host_keys.known_hosts or "")
    identity = None
    if deploy_key is not None:
        # ssh refuses a key file whose last line has no line end.
        identity = _private_file(private_dir / "deploy_key", deploy_key.strip() + "\n")
    command = ssh_command(
        known_hosts_file=known_hosts, strict=host_keys.policy == "strict", identity_file=identity
    )
    return {"GIT_SSH_COMMAND": command}


def _access_environment(
    job: WorkerInput, credential: str | None, private_dir: Path
) -> dict[str, str]:
    ssh = uses_ssh(job.git_repo_url)
    kind = job.credential.credential_type if job.credential is not None else None
    if kind == "pat" and ssh:
        raise JobFailure(
            "credential_mismatch",
            "the job's credential is an access token, which works over https, "
            "but the repository URL is an ssh one",
        )
    if kind == "deploy_key" and not ssh:
        raise JobFailure(
            "credential_mismatch",
            "the job's credential is a deploy key, which works over ssh, "
            "but the repository URL is not an ssh one",
        )
    if ssh:
        return _ssh_environment(job, private_dir, credential)
    if job.credential is not None and credential is not None:
        token_file = _private_file(private_dir / "token", credential.strip())
        return pat_environment(token_file, job.credential.provider)
    return {}


@contextmanager
def clone_access(
    job: WorkerInput, credential: str | None, private_dir: Path
) -> Iterator[dict[str, str]]:
    """The environment variables git needs for the clone; their files are gone afterwards."""
    private_dir.mkdir(mode=0o700)
    try:
        yield _access_environment(job, credential, private_dir)
    finally:
        shutil.rmtree(private_dir, ignore_errors=True)
