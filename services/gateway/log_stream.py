"""A job's log as Server-Sent Events: history first, then live lines, then the job's end.

Each line is one event whose `data` is the line's `LogEntry` JSON and whose `id`
is its LOGS stream sequence, so a client reconnecting with `Last-Event-ID`
resumes right after it (lines served from the archive carry no id). When the
job has ended, `event: end` gives its status and `data: [DONE]` closes the
stream, which is where the open-source `ckrv` client stops reading. Comments
keep an idle connection alive; `retry:` makes browsers reconnect soon after a cut.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from uuid import UUID

from ckrv.events.state import ApiStatus
from ckrv.services.gateway.errors import validation_error
from ckrv.services.gateway.live_logs import LiveLogs
from ckrv.services.gateway.log_history import LogLines, StoredLine

MEDIA_TYPE = "text/event-stream"
HEADERS = {
    "Cache-Control": "no-cache",
    # nginx (and proxies that follow it) would otherwise buffer the stream.
    "X-Accel-Buffering": "no",
}
HEARTBEAT = b": heartbeat\n\n"
DONE = b"data: [DONE]\n\n"
# Lines read from JetStream per request while a stream catches up.
CATCH_UP_BATCH = 200
CATCH_UP_MAX_BYTES = 256 * 1024


@dataclass(frozen=True)
class StreamTiming:
    heartbeat_seconds: float
    retry_milliseconds: int
    end_quiet_seconds: float


def resume_id(text: str | None) -> int | None:
    """The stream sequence a client resumes after (`Last-Event-ID`), if it sent one."""
    if text is None or not text.strip():
        return None
    try:
        value = int(text.strip())
    except ValueError:
        value = -1
    if value < 0:
        raise validation_error("Last-Event-ID", "is not an event id of this stream")
    return value


def retry_field(milliseconds: int) -> bytes:
    """The `retry:` field, to go with the stream's first event: alone, it would make an event
    with empty data for some clients."""
    return f"retry: {milliseconds}\n".encode()


def named_event(name: str, data: dict[str, object]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def end_events(status: ApiStatus) -> bytes:
    return named_event("end", {"status": status.value}) + DONE


def line_events(lines: Sequence[StoredLine]) -> bytes:
    chunks = []
    for line in lines:
        if line.sequence is not None:
            chunks.append(b"id: %d\n" % line.sequence)
        data = line.data
        if b"\n" in data or b"\r" in data:
            # A field ends at a line break: each line of the data goes in a field of its own.
            data = b"\ndata: ".join(data.splitlines())
        chunks.append(b"data: %s\n\n" % data)
    return b"".join(chunks)


async def archived_stream(
    lines: Sequence[StoredLine], status: ApiStatus, timing: StreamTiming, *, reset: bool
) -> AsyncIterator[bytes]:
    """An ended job's log from its archive."""
    prefix = retry_field(timing.retry_milliseconds)
    if reset:
        yield prefix + reset_event()
        prefix = b""
    for start in range(0, len(lines), CATCH_UP_BATCH):
        yield prefix + line_events(lines[start : start + CATCH_UP_BATCH])
        prefix = b""
    yield prefix + end_events(status)


def reset_event() -> bytes:
    return named_event(
        "reset",
        {"message": "the requested event is no longer kept: the log starts again"},
    )


async def live_stream(
    job_id: UUID,
    position: int,
    *,
    lines: LogLines,
    live: LiveLogs,
    timing: StreamTiming,
    reset: bool,
) -> AsyncIterator[bytes]:
    """The job's lines from stream sequence `position` on, live until the job ended."""
    async with live.follow(job_id) as follower:
        prefix = retry_field(timing.retry_milliseconds)
        if reset:
            yield prefix + reset_event()
            prefix = b""
        channel = follower.channel
        loop_time = channel.loop_time
        last_sent = position - 1
        last_write = loop_time()
        while not live.closed:
            # Read from JetStream until caught up: at the start, and after falling behind.
            while True:
                batch = await lines.read(
                    job_id, last_sent + 1, CATCH_UP_BATCH, max_bytes=CATCH_UP_MAX_BYTES
                )
                if batch.lines:
                    yield prefix + line_events(batch.lines)
                    prefix = b""
                    last_sent = batch.lines[-1].sequence or last_sent
                    last_write = loop_time()
                if not batch.more:
                    break
            # Then the live lines the channel hands over, until this stream falls behind.
            while not follower.overflowed and not live.closed:
                taken = follower.take(after_sequence=last_sent)
                if taken:
                    yield prefix + line_events(taken)
                    prefix = b""
                    last_sent = taken[-1].sequence or last_sent
                    last_write = loop_time()
                    continue
                seconds_to_end = channel.seconds_to_end(timing.end_quiet_seconds)
                if seconds_to_end is not None and seconds_to_end <= 0:
                    assert channel.ended_status is not None
                    yield prefix + end_events(channel.ended_status)
                    return
                heartbeat_due = last_write + timing.heartbeat_seconds - loop_time()
                if heartbeat_due <= 0:
                    yield HEARTBEAT
                    last_write = loop_time()
                    continue
                await follower.wait(
                    heartbeat_due if seconds_to_end is None else min(heartbeat_due, seconds_to_end)
                )
            follower.restart()
