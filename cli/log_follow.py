"""Following a job's log to its end over Server-Sent Events, through network losses.

A lost connection (refused, dropped, silent past the heartbeats, or a stream cut
before its end) is made again after a growing pause, resuming after the last
line received (`Last-Event-ID`), so no line is lost or shown twice. A refusal
by the service (4xx) ends the follow at once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
from pydantic import ValidationError

from ckrv.cli.client import CloudClient
from ckrv.cli.errors import CloudError
from ckrv.cli.models import LogLine

# Pauses before each reconnection in a row; the last one repeats.
RECONNECT_DELAYS_SECONDS = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0)
# Reconnections in a row, without a line or an end in between, before giving up.
MAX_RECONNECTS = 20
DONE = "[DONE]"


def reconnect_delay(failures: int) -> float:
    """The pause before the `failures`-th reconnection in a row (from 1)."""
    return RECONNECT_DELAYS_SECONDS[min(failures, len(RECONNECT_DELAYS_SECONDS)) - 1]


def follow_log(
    client: CloudClient,
    job_id: str,
    *,
    tail: int | None,
    on_line: Callable[[LogLine], None],
    on_notice: Callable[[str], None],
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Hand each line to `on_line` until the job ends; its status (`succeeded`, `failed`, ...).

    `on_notice` hears of lost connections and reconnections.
    """
    last_event_id: str | None = None
    failures = 0
    while True:
        status: str | None = None
        try:
            with client.log_events(
                job_id, tail=None if last_event_id else tail, last_event_id=last_event_id
            ) as events:
                for event in events:
                    if event.event == "end":
                        status = _end_status(event.data)
                    elif event.event == "reset":
                        on_notice(
                            "the log's earlier lines are no longer kept; it starts again "
                            "from its first kept line"
                        )
                    elif event.data == DONE:
                        return status or client.get_job(job_id).status
                    elif event.event == "message" and event.data:
                        on_line(_line(event.data))
                        last_event_id = event.id or last_event_id
                        failures = 0
            reason = "the stream ended before the job did"
        except httpx.TransportError as error:
            reason = str(error).strip() or type(error).__name__
        except CloudError as error:
            if error.http_status is not None and error.http_status < 500:
                raise
            reason = error.message
        failures += 1
        if failures > MAX_RECONNECTS:
            raise CloudError(
                "unreachable",
                f"lost the log stream of job {job_id} and could not get it back: {reason}",
                hint=f"Run `ckrv logs -f {job_id}` again once the network is back.",
            )
        delay = reconnect_delay(failures)
        on_notice(f"connection lost ({reason}); reconnecting in {delay:g}s")
        sleep(delay)


def _end_status(data: str) -> str | None:
    try:
        body: Any = json.loads(data)
    except ValueError:
        return None
    status = body.get("status") if isinstance(body, dict) else None
    return status if isinstance(status, str) else None


def _line(data: str) -> LogLine:
    try:
        return LogLine.from_body(json.loads(data))
    except (ValueError, ValidationError) as error:
        raise CloudError("bad_response", f"a log event is not a log line: {data[:200]}") from error
