"""Log stream tickets: the proof a browser's `EventSource`, which sends no bearer token, shows.

A ticket names one user, one job and when it was issued, signed (HMAC-SHA256,
itsdangerous) with the gateway's session secret under a salt of its own, so
neither a session cookie nor any other signed value passes for one. How long it
stays valid depends on its job (`ticket_accepted`): the browser reconnects with
the same URL for as long as the stream runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from itsdangerous import BadSignature, URLSafeSerializer

SIGNING_SALT = "ckrv-log-stream-ticket"


@dataclass(frozen=True)
class LogTicket:
    user_id: UUID
    job_id: UUID
    issued_at: datetime


class LogTickets:
    def __init__(self, secret: str) -> None:
        self._serializer = URLSafeSerializer(secret, salt=SIGNING_SALT)

    def issue(self, user_id: UUID, job_id: UUID, *, at: datetime | None = None) -> str:
        issued_at = int((at or datetime.now(UTC)).timestamp())
        return self._serializer.dumps([str(user_id), str(job_id), issued_at])

    def read(self, ticket: str) -> LogTicket | None:
        """The ticket's content if this gateway signed it; else None."""
        try:
            value: Any = self._serializer.loads(ticket)
            user_id, job_id, issued_at = value
            return LogTicket(
                user_id=UUID(user_id),
                job_id=UUID(job_id),
                issued_at=datetime.fromtimestamp(int(issued_at), UTC),
            )
        except (BadSignature, TypeError, ValueError, AttributeError):
            return None


def ticket_accepted(
    ticket: LogTicket,
    job_ended_at: datetime | None,
    now: datetime,
    *,
    validity: timedelta,
    max_age: timedelta,
) -> bool:
    """Valid for `validity` after it was issued, and beyond that while the job runs and for
    `validity` after it ended; never after `max_age`."""
    age = now - ticket.issued_at
    if age > max_age:
        return False
    if age <= validity:
        return True
    return job_ended_at is None or now - job_ended_at <= validity
