"""A job's log line as the log-relay publishes it on `logs.<job_id>` and the API serves it.

Field names are those of the open-source `ckrv` client's `LogEntry` (it drops an
entry without `timestamp`); `seq` and `phase` are ours. One message on the LOGS
stream carries one entry as JSON; its stream sequence is the entry's SSE `id`.
"""

from __future__ import annotations

import enum

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

# One line of a workload's output at most; longer lines are split into several entries.
MAX_LOG_MESSAGE_CHARACTERS = 16_384


class LogLevel(enum.StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARN = "warn"
    ERROR = "error"


class LogEntry(BaseModel):
    """One line of a job's log."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    timestamp: AwareDatetime = Field(description="When the line was written (RFC 3339, UTC).")
    level: LogLevel = Field(description="`debug`, `info`, `warn` or `error`.")
    source: str = Field(
        min_length=1, description="Who wrote it: `worker`, `agent:<name>`, or `ckrv` for ours."
    )
    message: str = Field(
        max_length=MAX_LOG_MESSAGE_CHARACTERS, description="The text, secrets masked."
    )
    phase: str | None = Field(default=None, description="The job's phase when it was written.")
    attempt: int = Field(ge=1, description="The attempt whose workload wrote it.")
    seq: int = Field(ge=1, description="Line number within the job's log, from 1, across attempts.")
