"""What a workload is given: `job.json` and, for a private repository, a `credential` file.

Both live in the folder named by `$CKRV_INPUT_DIR` (on Kubernetes, the job's Secret mounted
read-only; on the local runner, a private folder). The dispatcher builds them with
`WorkerInput.files(credential_value)`; the worker reads them with `read_worker_input`. The
credential's value is only ever in its own file: never in job.json, the environment,
a command line or a log line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ckrv.schemas.git import validate_branch_name
from ckrv.services.worker.outcome import InfrastructureFailure

INPUT_DIR_ENV = "CKRV_INPUT_DIR"
WORKSPACE_ENV = "CKRV_WORKSPACE"
JOB_FILE = "job.json"
CREDENTIAL_FILE = "credential"

ArtifactName = Literal["diff.patch", "repo.bundle", "result.json"]
ARTIFACT_NAMES: tuple[ArtifactName, ...] = ("diff.patch", "repo.bundle", "result.json")
GitProvider = Literal["github", "gitlab", "bitbucket", "generic"]
CredentialType = Literal["pat", "deploy_key"]


class GitCredentialInfo(BaseModel):
    """What kind of credential the `credential` file holds; its value is not here."""

    model_config = ConfigDict(frozen=True)

    provider: GitProvider = Field(description="Who hosts the repository; picks the PAT user name.")
    credential_type: CredentialType = Field(
        description="`pat`: an access token for https; `deploy_key`: an SSH private key."
    )


class SshHostKeyChecking(BaseModel):
    """How ssh decides whether to trust the git server's host key."""

    model_config = ConfigDict(frozen=True)

    policy: Literal["strict", "accept-new"] = Field(
        default="accept-new",
        description=(
            "`strict`: only the keys in `known_hosts`; `accept-new`: trust the key seen first "
            "(a fresh workload has seen none, so this trusts whatever answers)."
        ),
    )
    known_hosts: str | None = Field(
        default=None, description="OpenSSH known_hosts lines for the git host; needed by `strict`."
    )

    @model_validator(mode="after")
    def _strict_needs_keys(self) -> SshHostKeyChecking:
        if self.policy == "strict" and not (self.known_hosts or "").strip():
            raise ValueError("the `strict` host key policy needs `known_hosts` lines")
        return self


class WorkerInput(BaseModel):
    """Everything one attempt of a job needs, except the git credential's value."""

    # Ignoring unknown fields lets a newer dispatcher talk to an older worker image.
    model_config = ConfigDict(frozen=True, extra="ignore")

    job_id: UUID = Field(description="The job this workload runs.")
    attempt: int = Field(ge=1, description="Which attempt of the job this is (1-based).")
    spec_content: str = Field(min_length=1, description="The full text of the spec file.")
    git_repo_url: str = Field(min_length=1, description="Repository to clone (https or ssh).")
    git_base_branch: str = Field(description="Branch the job's branch starts from.")
    feature_branch: str = Field(
        description="Branch the result is committed to: `ckrv/<first 8 hex of the job id>`, "
        "filled in from `job_id` when not given."
    )
    time_limit_seconds: int = Field(
        gt=0, description="Wall-clock limit of the run, agents included."
    )
    upload_urls: dict[ArtifactName, str] = Field(
        description="A presigned HTTP PUT URL for each of `diff.patch`, `repo.bundle`, "
        "`result.json`."
    )
    credential: GitCredentialInfo | None = Field(
        default=None, description="The kind of git credential in the `credential` file, if any."
    )
    ssh_host_keys: SshHostKeyChecking = Field(
        default_factory=SshHostKeyChecking, description="Host key checking for ssh clones."
    )
    agents: tuple[str, ...] | None = Field(
        default=None,
        description="Agents from `agents.yaml` to run, in order; by default `script` when the "
        "spec has a `script:` list, otherwise the catalog's default agent.",
    )
    allow_local_repository: bool = Field(
        default=False,
        description="Development only: allow a local path or `file://` URL as the repository.",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_feature_branch(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("feature_branch") is None and "job_id" in data:
            # Imported only here, where the dispatcher builds an input: the event catalog takes
            # about 100 ms to import, and the worker reads a job.json that names the branch.
            from ckrv.events.catalog import feature_branch_name

            return {**data, "feature_branch": feature_branch_name(UUID(str(data["job_id"])))}
        return data

    @field_validator("git_base_branch", "feature_branch")
    @classmethod
    def _valid_branch(cls, name: str) -> str:
        return validate_branch_name(name, field="branch")

    @field_validator("upload_urls")
    @classmethod
    def _every_artifact_has_a_url(cls, urls: dict[ArtifactName, str]) -> dict[ArtifactName, str]:
        missing = [name for name in ARTIFACT_NAMES if name not in urls]
        if missing:
            raise ValueError(f"no upload URL for {', '.join(missing)}")
        for name, url in urls.items():
            if urlsplit(url).scheme not in {"http", "https"}:
                raise ValueError(f"the upload URL for {name} is not an http(s) URL")
        return urls

    @field_validator("agents")
    @classmethod
    def _agent_names(cls, names: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if names is not None and not names:
            raise ValueError("name at least one agent, or leave `agents` out")
        return names

    def files(self, credential_value: str | None = None) -> dict[str, bytes]:
        """The input folder's files by name: `job.json`, and `credential` when there is one."""
        if (credential_value is None) != (self.credential is None):
            raise ValueError("give a credential value exactly when `credential` is set")
        files = {JOB_FILE: self.model_dump_json(indent=2).encode()}
        if credential_value is not None:
            files[CREDENTIAL_FILE] = credential_value.encode()
        return files


def _validation_problems(error: ValidationError) -> str:
    # Without the offending values: they are the dispatcher's business, not the log's.
    return "; ".join(
        f"{'.'.join(str(part) for part in problem['loc']) or 'job'}: {problem['msg']}"
        for problem in error.errors()
    )


def read_worker_input(input_dir: Path) -> tuple[WorkerInput, str | None]:
    """The job and the credential's value from the input folder.

    Raises `InfrastructureFailure` (`input_unreadable` or `input_invalid`) saying what is wrong.
    """
    job_path = input_dir / JOB_FILE
    try:
        document = json.loads(job_path.read_bytes())
    except OSError as error:
        raise InfrastructureFailure(
            "input_unreadable", f"cannot read {job_path}: {error.strerror}"
        ) from error
    except ValueError as error:
        raise InfrastructureFailure("input_invalid", f"{job_path} is not JSON: {error}") from error
    try:
        job = WorkerInput.model_validate(document)
    except ValidationError as error:
        raise InfrastructureFailure(
            "input_invalid", f"{job_path} is not a valid job: {_validation_problems(error)}"
        ) from error
    if job.credential is None:
        return job, None
    credential_path = input_dir / CREDENTIAL_FILE
    try:
        credential = credential_path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise InfrastructureFailure(
            "input_unreadable",
            f"job.json names a {job.credential.credential_type} credential, "
            f"but {credential_path} cannot be read",
        ) from error
    if not credential.strip():
        raise InfrastructureFailure("input_invalid", f"{credential_path} is empty")
    return job, credential
