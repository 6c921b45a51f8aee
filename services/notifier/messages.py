"""What a webhook says: a job event with the job as the API shows it then, or a ping.

Pure functions of their inputs: the same event and history always give the same
body, byte for byte, however often the notifier reads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from ckrv.events.catalog import JobEvent
from ckrv.events.envelope import new_event_id
from ckrv.events.history import StoredEvent
from ckrv.events.state import fold
from ckrv.schemas.webhooks import PING_EVENT_TYPE
from ckrv.services.gateway.presenter import present
from ckrv.services.gateway.projection import record_for
from ckrv.services.notifier.deliveries import message_body
from ckrv.services.notifier.tables import WebhookMessage


@dataclass(frozen=True)
class JobMessage:
    owner: UUID
    message: WebhookMessage


def job_event_message(
    event: JobEvent, sequence: int, history: Sequence[StoredEvent]
) -> JobMessage | None:
    """The message of `event` (at `sequence` on JOBS) for its job's owner.

    `history` is the job's events as read from JOBS; those after `sequence` are left out,
    so the job is shown as it was just after the event. None for a job whose submission
    is not on the stream: it has no owner to tell.
    """
    state = fold(event.job_id, (stored.event for stored in history if stored.sequence <= sequence))
    if state.user_id is None:
        return None
    # No typical durations: a completion estimate would differ between reads of one event.
    job = present(record_for(state, sequence), {}, now=event.occurred_at)
    body = message_body(event.type, event.occurred_at, job.model_dump(mode="json"))
    return JobMessage(
        UUID(state.user_id),
        WebhookMessage(id=event.id, event_type=event.type, body=body, created_at=event.occurred_at),
    )


def ping_message(endpoint_id: UUID, now: datetime) -> WebhookMessage:
    """A message of its own for `POST /v1/webhooks/{id}/test`."""
    body = message_body(PING_EVENT_TYPE, now, {"webhook_id": str(endpoint_id)})
    return WebhookMessage(id=new_event_id(), event_type=PING_EVENT_TYPE, body=body, created_at=now)
