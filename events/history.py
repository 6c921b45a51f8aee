"""Reads one job's event history from JOBS with batched direct gets.

One request (`next_by_subj` over `jobs.<job_id>.*`, up to a batch of messages)
answers most jobs in a single round trip; longer histories continue from the
last sequence seen.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from uuid import UUID

from nats.aio.client import Client

from ckrv.events.catalog import JobEvent, parse_event
from ckrv.events.subjects import JOBS_STREAM, job_subjects

DIRECT_GET_SUBJECT = f"$JS.API.DIRECT.GET.{JOBS_STREAM}"
END_OF_BATCH = "204"
NOT_FOUND = "404"


class HistoryReadError(Exception):
    """The stream answered a history read with something other than messages."""


@dataclass(frozen=True)
class StoredEvent:
    sequence: int
    event: JobEvent


async def read_job_history(
    nc: Client,
    job_id: UUID,
    *,
    after_sequence: int = 0,
    batch_size: int = 256,
    reply_timeout: float = 5.0,
) -> list[StoredEvent]:
    """Every event of the job after `after_sequence`, oldest first."""
    history: list[StoredEvent] = []
    inbox = nc.new_inbox()
    subscription = await nc.subscribe(inbox)
    try:
        next_sequence = after_sequence + 1
        while True:
            request = {
                "seq": next_sequence,
                "next_by_subj": job_subjects(job_id),
                "batch": batch_size,
            }
            await nc.publish(DIRECT_GET_SUBJECT, json.dumps(request).encode(), reply=inbox)
            more = False
            while True:
                message = await subscription.next_msg(timeout=reply_timeout)
                headers = message.headers or {}
                status = headers.get("Status")
                if status == NOT_FOUND:
                    break
                if status == END_OF_BATCH:
                    more = int(headers.get("Nats-Num-Pending", "0")) > 0
                    break
                if status is not None:
                    raise HistoryReadError(
                        f"reading job {job_id}: status {status} {headers.get('Description')}"
                    )
                sequence = int(headers["Nats-Sequence"])
                history.append(StoredEvent(sequence, parse_event(message.data)))
                next_sequence = sequence + 1
            if not more:
                return history
    finally:
        await subscription.unsubscribe()
