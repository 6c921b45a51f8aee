"""`result.json`: what a job produced, as the worker uploads it beside the diff and the bundle."""

from __future__ import annotations

from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

# As in the event catalog, which the worker does not import: it is slow to import.
SHA256_PATTERN = r"^[0-9a-f]{64}$"


class ArtifactDigest(BaseModel):
    """Size and hash of an uploaded file, to check the stored object against."""

    model_config = ConfigDict(frozen=True)

    size_bytes: int = Field(ge=0, description="Size of the file in bytes.")
    sha256: str = Field(pattern=SHA256_PATTERN, description="Hex SHA-256 of the file.")


class AgentRun(BaseModel):
    """One agent's run, with what it reported about its use of the model."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(description="The agent's name in agents.yaml.")
    duration_seconds: float = Field(ge=0, description="How long it ran.")
    input_tokens: int | None = Field(
        default=None, description="Prompt tokens, cached ones included; none if not reported."
    )
    output_tokens: int | None = Field(default=None, description="Tokens it generated.")
    cost_usd: float | None = Field(default=None, description="What it says the run cost.")


class JobResult(BaseModel):
    """The content of `result.json`."""

    model_config = ConfigDict(frozen=True)

    job_id: UUID
    attempt: int = Field(ge=1)
    spec_id: str
    summary: str = Field(description="What the agents did, in a sentence.")
    base_branch: str
    base_commit: str = Field(description="The commit the job started from.")
    feature_branch: str = Field(description="The branch in `repo.bundle` holding the result.")
    head_commit: str = Field(description="The feature branch's commit; the base if no change.")
    files_changed: tuple[str, ...] = Field(description="Paths changed, relative to the root.")
    insertions: int = Field(ge=0)
    deletions: int = Field(ge=0)
    agents: tuple[AgentRun, ...] = Field(description="The agents that ran, in order.")
    metrics: dict[str, int | float] = Field(
        description="`duration_seconds`, and the sums of `input_tokens`, `output_tokens` and "
        "`cost_usd` when an agent reported them."
    )
    artifacts: dict[str, ArtifactDigest] = Field(
        description="`diff.patch` and `repo.bundle` by name, as uploaded."
    )
