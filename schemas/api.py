"""Bodies of the `/v1` API, with the field names the open-source `ckrv` client reads."""

from __future__ import annotations

import enum
import re
from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError


class JobStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"


TERMINAL_JOB_STATUSES = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.TIMEOUT, JobStatus.CANCELLED}
)


class SubscriptionTier(enum.StrEnum):
    FREE = "free"
    PRO = "pro"
    ENTERPRISE = "enterprise"


class JobCreate(BaseModel):
    """A job to run: the spec's text, the repository and the branch to start from."""

    model_config = ConfigDict(extra="forbid")

    spec_content: str = Field(description="The full spec file (YAML, at most 256 KiB).")
    git_repo_url: str = Field(description="Repository to clone: https or ssh.")
    git_base_branch: str = Field(default="main", description="Branch the work starts from.")
    git_credential_name: str | None = Field(
        default=None, description="Name of a stored git credential, for private repositories."
    )


class JobPublic(BaseModel):
    """A job as its owner sees it."""

    id: UUID
    status: JobStatus
    phase: str | None = Field(
        description="Detail within the status: queued, dispatched, cloning, planning, "
        "executing, verifying, uploading."
    )
    attempt: int = Field(description="Current attempt; 0 until the job is queued.")
    spec_id: str
    git_repo_url: str
    git_base_branch: str
    git_credential_name: str | None
    feature_branch_name: str | None = Field(description="Branch holding the job's result.")
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    result_status: JobStatus | None = Field(
        description="succeeded, failed or timeout once the job ran to an end; else null."
    )
    result_summary: str | None
    error_message: str | None
    metrics: dict[str, int | float] | None
    elapsed_seconds: float | None = Field(description="Running time so far, or in total.")
    estimated_completion_at: datetime | None = Field(
        description="From the owner's recent successful jobs on the same repository."
    )
    cancel_requested: bool


class JobsPublic(BaseModel):
    jobs: list[JobPublic]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null at end.")


class JobEventPublic(BaseModel):
    """One entry of a job's audit trail."""

    sequence: int = Field(description="Position in the JOBS stream.")
    id: UUID
    type: str
    version: int
    occurred_at: datetime
    actor: str
    data: dict[str, Any]


class JobEventsPublic(BaseModel):
    events: list[JobEventPublic]


class ArtifactPublic(BaseModel):
    """A stored output of a job's final attempt, downloadable at `.../artifacts/{name}`."""

    name: str = Field(description="`diff.patch`, `repo.bundle`, `result.json` or `logs.jsonl`.")
    size: int = Field(description="Size in bytes.")
    sha256: str = Field(description="Hex SHA-256 of the content.")
    expires_at: datetime | None = Field(
        description="When it is deleted: the job's end plus the tier's retention (7 days); "
        "null while the job runs."
    )


class ArtifactsPublic(BaseModel):
    artifacts: list[ArtifactPublic] = Field(description="By name.")


class UserPublic(BaseModel):
    id: UUID
    email: str
    name: str | None
    subscription_tier: SubscriptionTier
    job_quota_remaining: int
    billing_cycle_end: datetime


class UsagePublic(BaseModel):
    billing_cycle_start: datetime
    billing_cycle_end: datetime
    subscription_tier: SubscriptionTier
    jobs_this_cycle: int = Field(description="Jobs charged this cycle (refunds excluded).")
    jobs_included: int
    overage_jobs: int
    overage_amount_cents: int
    overage_amount: str = Field(description="The overage amount in dollars, e.g. `1.50`.")


class GitProvider(enum.StrEnum):
    GITHUB = "github"
    GITLAB = "gitlab"
    BITBUCKET = "bitbucket"
    GENERIC = "generic"


class GitCredentialType(enum.StrEnum):
    PAT = "pat"
    DEPLOY_KEY = "deploy_key"


CREDENTIAL_NAME_PATTERN = r"^[a-z0-9-]{1,50}$"
MAX_CREDENTIAL_BYTES = 16 * 1024
# OpenSSH's own armour and PEM's (PKCS#1 `RSA`/`EC`/`DSA`, PKCS#8 plain or `ENCRYPTED`).
_PRIVATE_KEY = re.compile(
    r"-----BEGIN ((?:[A-Z0-9]+ )*PRIVATE KEY)-----\r?\n.+?\r?\n-----END \1-----", re.DOTALL
)
_PUBLIC_KEY = re.compile(r"^(ssh-|ecdsa-|sk-)\S+ |-----BEGIN (SSH2 |RSA )?PUBLIC KEY-----")
_TOKEN = re.compile(r"[\x21-\x7e]+")


def _invalid(message: str) -> PydanticCustomError:
    # Not a ValueError: its message would read "Value error, …".
    return PydanticCustomError("invalid_credential_value", message)


class GitCredentialCreate(BaseModel):
    """A git credential to store; its value can never be read back through the API."""

    # The value must not be echoed in error messages either.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    name: str = Field(
        pattern=CREDENTIAL_NAME_PATTERN,
        description="How jobs name it (`git_credential_name`): lower-case letters, digits, `-`.",
    )
    provider: GitProvider
    credential_type: GitCredentialType = GitCredentialType.PAT
    value: SecretStr = Field(
        description="A personal access token (one line), or a deploy key's private key "
        "(OpenSSH or PEM armour); at most 16 KiB. Write-only."
    )

    @field_validator("value")
    @classmethod
    def _value_fits_type(cls, value: SecretStr, info: ValidationInfo) -> SecretStr:
        text = value.get_secret_value()
        if not text.strip():
            raise _invalid("is empty")
        if len(text.encode()) > MAX_CREDENTIAL_BYTES:
            raise _invalid(f"is larger than {MAX_CREDENTIAL_BYTES // 1024} KiB")
        credential_type = info.data.get("credential_type")
        if credential_type is GitCredentialType.DEPLOY_KEY:
            key = text.strip()
            if _PUBLIC_KEY.match(key):
                raise _invalid("is a public key; a deploy key credential holds the private key")
            if not _PRIVATE_KEY.fullmatch(key):
                raise _invalid(
                    "is not a private key: expected OpenSSH or PEM armour "
                    "(-----BEGIN … PRIVATE KEY----- … -----END … PRIVATE KEY-----)"
                )
            # ssh refuses a key file whose last line has no newline.
            return SecretStr(key + "\n")
        if credential_type is GitCredentialType.PAT and not _TOKEN.fullmatch(text):
            raise _invalid("a token is one line of visible ASCII characters, without spaces")
        return value


class GitCredentialPublic(BaseModel):
    """A stored git credential as its owner sees it: everything but the value."""

    id: UUID
    name: str
    provider: GitProvider
    credential_type: GitCredentialType
    created_at: datetime
    last_used_at: datetime | None = Field(description="When a job last used it; null if never.")


class GitCredentialsPublic(BaseModel):
    credentials: list[GitCredentialPublic]


class ErrorBody(BaseModel):
    """Every error: a stable machine-readable `error` code and a message for people."""

    model_config = ConfigDict(extra="allow")

    error: str
    message: str
