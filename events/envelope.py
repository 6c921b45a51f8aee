"""The immutable event envelope every job event shares, and how event ids are made.

Decisions (a user's submit, a dispatcher's claim) get time-ordered uuid7 ids;
observations (a watcher seeing a pod finish) get uuid5 ids derived from what was
observed, so a restarted or duplicated observer emits the same id and JetStream's
`Nats-Msg-Id` dedupe drops the copy.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, ClassVar
from uuid import UUID, uuid5

import uuid_utils
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from ckrv.events.subjects import job_event_subject

ACTOR_PATTERN = re.compile(r"^(user|service):[A-Za-z0-9_.@-]+$")
OBSERVATION_NAMESPACE = UUID("7a1c2b9e-4d3f-5e6a-8b7c-9d0e1f2a3b4c")


def new_event_id() -> UUID:
    """A time-ordered id for an event that records a decision."""
    return UUID(str(uuid_utils.uuid7()))


def observation_event_id(*parts: object) -> UUID:
    """A deterministic id for an observed fact: the same parts always give the same id."""
    return uuid5(OBSERVATION_NAMESPACE, "/".join(str(part) for part in parts))


def utc_now() -> datetime:
    return datetime.now(UTC)


class EventData(BaseModel):
    """Base of every payload: frozen, and tolerant of fields added by newer producers."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class Event(BaseModel):
    """One immutable job event. Subclasses in the catalog fix `type`, `version` and `data`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    CURRENT_VERSION: ClassVar[int] = 1

    id: UUID = Field(default_factory=new_event_id, description="Unique event id; dedupe key.")
    type: str = Field(description="Event type, e.g. `job.submitted`.")
    version: int = Field(default=1, ge=1, description="Payload schema version of this type.")
    job_id: UUID = Field(description="The job this event belongs to.")
    occurred_at: AwareDatetime = Field(default_factory=utc_now, description="When it happened.")
    actor: str = Field(description="Who caused it: `user:<id>` or `service:<name>`.")
    correlation_id: UUID | None = Field(
        default=None, description="Id shared by every event of one causal chain."
    )
    causation_id: UUID | None = Field(default=None, description="Id of the event that caused this.")
    data: Any = Field(description="The type's payload.")

    @field_validator("actor")
    @classmethod
    def _actor_is_user_or_service(cls, actor: str) -> str:
        if not ACTOR_PATTERN.match(actor):
            raise ValueError("actor must look like `user:<id>` or `service:<name>`")
        return actor

    @field_validator("occurred_at")
    @classmethod
    def _occurred_at_in_utc(cls, occurred_at: datetime) -> datetime:
        return occurred_at.astimezone(UTC)

    @property
    def subject(self) -> str:
        return job_event_subject(self.job_id, self.type)
