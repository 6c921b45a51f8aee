"""The service's answers as the CLI reads them.

Lenient on purpose: unknown fields are kept and statuses or phases added by a
newer service are plain strings, so an older CLI keeps working. Each model
keeps the JSON body it was read from, which `--json` prints unchanged.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "timeout", "cancelled"})
JOB_STATUSES = ("pending", "running", "succeeded", "failed", "timeout", "cancelled")


def _assume_utc(moment: datetime) -> datetime:
    # The contract's times are UTC; one without an offset is read as UTC, not local time.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


Timestamp = Annotated[datetime, AfterValidator(_assume_utc)]


class ApiModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")

    _body: dict[str, Any] = PrivateAttr(default_factory=dict)

    @classmethod
    def from_body(cls, body: Any) -> Self:
        """Validate a decoded JSON body (pydantic's `ValidationError` if it is not one)."""
        model = cls.model_validate(body)
        model._body = body
        return model

    @property
    def body(self) -> dict[str, Any]:
        """The JSON object this was read from."""
        return self._body


class Job(ApiModel):
    id: str
    status: str
    phase: str | None = None
    attempt: int = 0
    spec_id: str | None = None
    git_repo_url: str
    git_base_branch: str
    git_credential_name: str | None = None
    feature_branch_name: str | None = None
    created_at: Timestamp
    started_at: Timestamp | None = None
    completed_at: Timestamp | None = None
    result_status: str | None = None
    result_summary: str | None = None
    error_message: str | None = None
    metrics: dict[str, Any] | None = None
    elapsed_seconds: float | None = None
    estimated_completion_at: Timestamp | None = None
    cancel_requested: bool = False

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


class JobPage(ApiModel):
    jobs: list[Job]
    next_cursor: str | None = None

    @classmethod
    def from_body(cls, body: Any) -> Self:
        page = super().from_body(body)
        # Each job keeps its own body too, so a merged listing prints what was received.
        for job, job_body in zip(page.jobs, body["jobs"], strict=True):
            job._body = job_body
        return page


class Artifact(ApiModel):
    """A stored result of a job: `diff.patch`, `repo.bundle`, `result.json`, `logs.jsonl`."""

    name: str
    size: int
    sha256: str
    expires_at: Timestamp | None = None


class ArtifactList(ApiModel):
    artifacts: list[Artifact]

    def named(self, name: str) -> Artifact | None:
        return next((artifact for artifact in self.artifacts if artifact.name == name), None)


class JobResultFile(ApiModel):
    """`result.json`: the job's own account of its result, as far as `ckrv pull` reads it."""

    summary: str = ""
    base_commit: str
    feature_branch: str
    head_commit: str
    files_changed: list[str] = Field(default_factory=list)
    insertions: int = 0
    deletions: int = 0


class User(ApiModel):
    id: str
    email: str
    name: str | None = None
    subscription_tier: str
    job_quota_remaining: int
    billing_cycle_end: Timestamp | None = None


class GitCredential(ApiModel):
    """A stored git credential as the service shows it: never its value."""

    id: str
    name: str
    provider: str
    credential_type: str
    created_at: Timestamp
    last_used_at: Timestamp | None = None


class GitCredentialList(ApiModel):
    credentials: list[GitCredential]


class Webhook(ApiModel):
    """An endpoint the service tells of the user's job events; its secret only when made."""

    id: str
    url: str
    event_types: list[str]
    description: str = ""
    enabled: bool = True
    disabled_reason: str | None = None
    consecutive_failures: int = 0
    created_at: Timestamp
    secret: str | None = None


class WebhookList(ApiModel):
    webhooks: list[Webhook]


class WebhookSecret(ApiModel):
    secret: str
    previous_secret_valid_until: Timestamp


class WebhookDelivery(ApiModel):
    """One event sent (or to be sent) to a webhook, with its latest attempt."""

    id: str
    event_id: str
    event_type: str
    status: str
    attempts: int = 0
    status_code: int | None = None
    latency_ms: float | None = None
    error: str | None = None
    next_attempt_at: Timestamp | None = None
    created_at: Timestamp


class WebhookDeliveryPage(ApiModel):
    deliveries: list[WebhookDelivery]
    next_cursor: str | None = None

    @classmethod
    def from_body(cls, body: Any) -> Self:
        page = super().from_body(body)
        for delivery, delivery_body in zip(page.deliveries, body["deliveries"], strict=True):
            delivery._body = delivery_body
        return page


class DeviceAuthorization(ApiModel):
    """`POST /auth/device`: what the user enters where, and how the CLI polls (RFC 8628 §3.2)."""

    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None = None
    expires_in: Annotated[float, Field(gt=0)]
    """Seconds the codes stay valid."""
    interval: float | None = None
    """Seconds between polls; the RFC's default of 5 when absent."""


class TokenPair(ApiModel):
    """`POST /auth/token` and `/auth/refresh`: an access token, and a refresh token for the next."""

    access_token: Annotated[str, Field(min_length=1)]
    refresh_token: str | None = None
    token_type: Annotated[str, Field(pattern=r"(?i)^bearer$")]
    expires_in: Annotated[float, Field(gt=0)]
    """Seconds the access token is valid."""

    def expires_at(self, now: datetime | None = None) -> datetime:
        return (now or datetime.now(UTC)) + timedelta(seconds=self.expires_in)


class LogLine(ApiModel):
    """One line of a job's log (`LogEntry`, and its stream position as `id`)."""

    timestamp: Timestamp
    level: str = "info"
    source: str = ""
    message: str = ""
    phase: str | None = None
    attempt: int | None = None
    seq: int = 0
    id: int | None = None


class LogPage(ApiModel):
    logs: list[LogLine]
    next: int | None = None
    """The `after` of the following page; None once the job ended and every line came."""

    @classmethod
    def from_body(cls, body: Any) -> Self:
        page = super().from_body(body)
        for line, line_body in zip(page.logs, body["logs"], strict=True):
            line._body = line_body
        return page
