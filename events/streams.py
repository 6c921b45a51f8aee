"""JetStream stream definitions for JOBS, LOGS and dead letters, and their idempotent provisioning.

Provisioning creates a missing stream, updates one whose managed settings drifted
(never deletes and recreates: that would lose the event history), and leaves a
matching one untouched, so it can run on every start of every service.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from ckrv.events.subjects import (
    DEAD_LETTER_PREFIX,
    JOBS_STREAM,
    JOBS_SUBJECTS,
    LOGS_STREAM,
    LOGS_SUBJECTS,
)

logger = logging.getLogger(__name__)

DAY_SECONDS = 24 * 60 * 60
DEAD_LETTER_STREAM = "DEADLETTER"
# Window in which a re-sent message with the same Nats-Msg-Id is dropped as a duplicate.
DUPLICATE_WINDOW_SECONDS = 2 * 60 * 60


@dataclass(frozen=True)
class StreamRetention:
    """How long each stream keeps its messages, in seconds."""

    jobs_max_age: float = 365 * DAY_SECONDS
    logs_max_age: float = 7 * DAY_SECONDS
    dead_letter_max_age: float = 30 * DAY_SECONDS


class ProvisionOutcome(enum.StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


def stream_configs(
    retention: StreamRetention | None = None, replicas: int | None = None
) -> list[StreamConfig]:
    """The desired configuration of every stream the service owns.

    `replicas` is how many servers of a JetStream cluster keep each stream; None leaves an
    existing stream's count as it is (and a new stream gets the server's default, 1).
    """
    retention = retention or StreamRetention()
    return [
        _stream(
            JOBS_STREAM,
            "Job events: the source of truth for every job's state.",
            JOBS_SUBJECTS,
            retention.jobs_max_age,
            replicas,
            # Events are history: nobody may delete or purge them through the API.
            immutable=True,
        ),
        _stream(
            LOGS_STREAM,
            "Job log lines, one message per line.",
            LOGS_SUBJECTS,
            retention.logs_max_age,
            replicas,
        ),
        _stream(
            DEAD_LETTER_STREAM,
            "Messages a consumer could never handle, with the reason in headers.",
            f"{DEAD_LETTER_PREFIX}.>",
            retention.dead_letter_max_age,
            replicas,
        ),
    ]


def _stream(
    name: str,
    description: str,
    subjects: str,
    max_age: float,
    replicas: int | None,
    *,
    immutable: bool = False,
) -> StreamConfig:
    return StreamConfig(
        name=name,
        description=description,
        subjects=[subjects],
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        max_age=max_age,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        num_replicas=replicas,
        allow_direct=True,
        deny_delete=immutable,
        deny_purge=immutable,
    )


# The settings provisioning manages; anything else on a live stream is left as the operator set it.
MANAGED_FIELDS = (
    "subjects",
    "storage",
    "retention",
    "discard",
    "max_age",
    "duplicate_window",
    "num_replicas",
    "allow_direct",
    "deny_delete",
    "deny_purge",
    "description",
)


def _drifted_fields(current: StreamConfig, desired: StreamConfig) -> list[str]:
    return [
        name
        for name in MANAGED_FIELDS
        if getattr(desired, name) is not None
        and _normalised(getattr(current, name)) != _normalised(getattr(desired, name))
    ]


def _normalised(value: object) -> object:
    # The server reports durations in nanoseconds and the client converts them back to
    # float seconds, which can differ from the configured value in the last digits.
    if isinstance(value, float):
        return round(value, 3)
    return value


async def provision_streams(
    js: JetStreamContext, retention: StreamRetention | None = None, replicas: int | None = None
) -> dict[str, ProvisionOutcome]:
    """Create or update every stream so it matches `stream_configs`; report what happened."""
    outcomes: dict[str, ProvisionOutcome] = {}
    for desired in stream_configs(retention, replicas):
        assert desired.name is not None
        try:
            info = await js.stream_info(desired.name)
        except NotFoundError:
            await js.add_stream(desired)
            outcomes[desired.name] = ProvisionOutcome.CREATED
            logger.info("stream created", extra={"stream": desired.name})
            continue
        drifted = _drifted_fields(info.config, desired)
        if not drifted:
            outcomes[desired.name] = ProvisionOutcome.UNCHANGED
            continue
        merged = StreamConfig.from_response(info.config.as_dict())
        for name in drifted:
            setattr(merged, name, getattr(desired, name))
        await js.update_stream(merged)
        outcomes[desired.name] = ProvisionOutcome.UPDATED
        logger.info("stream updated", extra={"stream": desired.name, "fields": drifted})
    return outcomes
