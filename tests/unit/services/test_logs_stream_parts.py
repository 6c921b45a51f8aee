"""The log stream's pure parts: events as written, and stream tickets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

from ckrv.events.state import ApiStatus
from ckrv.services.gateway.log_history import StoredLine
from ckrv.services.gateway.log_stream import end_events, line_events
from ckrv.services.gateway.log_tickets import LogTickets, ticket_accepted

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
VALIDITY = timedelta(minutes=5)
MAX_AGE = timedelta(days=1)


def test_a_line_is_an_event_with_its_stream_sequence_as_id() -> None:
    lines = [StoredLine(7, b'{"seq": 1}'), StoredLine(None, b'{"seq": 2}')]
    assert line_events(lines) == b'id: 7\ndata: {"seq": 1}\n\ndata: {"seq": 2}\n\n'


def test_data_with_line_breaks_stays_one_event() -> None:
    (event,) = line_events([StoredLine(3, b'{"a":\n1,\r\n"b": 2}')]).split(b"\n\n")[:-1]
    assert event == b'id: 3\ndata: {"a":\ndata: 1,\ndata: "b": 2}'


def test_the_end_names_the_status_then_done() -> None:
    assert end_events(ApiStatus.TIMEOUT) == (
        b'event: end\ndata: {"status": "timeout"}\n\ndata: [DONE]\n\n'
    )


def test_a_ticket_reads_back_and_resists_tampering() -> None:
    tickets = LogTickets("a secret")
    user_id, job_id = uuid4(), uuid4()
    ticket = tickets.issue(user_id, job_id, at=NOW)
    read = tickets.read(ticket)
    assert read is not None
    assert (read.user_id, read.job_id, read.issued_at) == (user_id, job_id, NOW)
    payload, signature = ticket.rsplit(".", 1)
    other_job = tickets.issue(user_id, uuid4(), at=NOW).rsplit(".", 1)[0]
    assert tickets.read(f"{other_job}.{signature}") is None
    assert tickets.read(f"{payload}.{signature[:5]}") is None
    assert LogTickets("another secret").read(ticket) is None
    assert tickets.read("not a ticket") is None


def test_a_ticket_lasts_while_its_job_runs_and_briefly_after() -> None:
    ticket = LogTickets("a secret").read(LogTickets("a secret").issue(uuid4(), uuid4(), at=NOW))
    assert ticket is not None

    def accepted(after: timedelta, ended_before: timedelta | None) -> bool:
        now = NOW + after
        ended_at = None if ended_before is None else now - ended_before
        return ticket_accepted(ticket, ended_at, now, validity=VALIDITY, max_age=MAX_AGE)

    assert accepted(timedelta(minutes=4), ended_before=timedelta(hours=1))
    assert accepted(timedelta(hours=3), ended_before=None)
    assert accepted(timedelta(hours=3), ended_before=timedelta(minutes=4))
    assert not accepted(timedelta(hours=3), ended_before=timedelta(minutes=6))
    assert not accepted(timedelta(days=2), ended_before=None)
