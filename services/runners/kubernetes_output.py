"""A pod's output as the log API serves it with `timestamps=true`, read again after a break.

Each line comes as `<RFC 3339 timestamp> <line>`; the output a workload wrote is
the lines without their timestamps. After a break a reader asks again from
`sinceTime`, which the API server rounds down to the second, so the new stream
repeats the lines of that second: the `LogCursor` drops what was already taken.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

_NANOSECONDS = 1_000_000_000


def timestamp_nanoseconds(stamp: bytes) -> int:
    """Nanoseconds since the epoch of an RFC 3339 timestamp in UTC (`...T12:00:00.5Z`)."""
    text = stamp.decode("ascii")
    if not text.endswith("Z"):
        raise ValueError(f"not a UTC timestamp: {text!r}")
    whole, _, fraction = text[:-1].partition(".")
    seconds = datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
    return int(seconds) * _NANOSECONDS + int(fraction.ljust(9, "0")[:9] or 0)


def since_time(nanoseconds: int) -> str:
    """The `sinceTime` parameter for lines from that moment's second on."""
    moment = datetime.fromtimestamp(nanoseconds // _NANOSECONDS, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class TimestampedLines:
    """Splits a timestamped log stream into `(nanoseconds, line)`, as its bytes arrive."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> Iterator[tuple[int, bytes]]:
        """The lines `data` completes, each with its newline."""
        self._pending += data
        *complete, self._pending = self._pending.split(b"\n")
        for line in complete:
            yield _entry(line + b"\n")

    def rest(self) -> Iterator[tuple[int, bytes]]:
        """The last line if it had no newline; only when the stream is known to be whole."""
        if self._pending:
            yield _entry(self._pending)
            self._pending = b""


def _entry(line: bytes) -> tuple[int, bytes]:
    stamp, separator, content = line.partition(b" ")
    if not separator:
        raise ValueError(f"a log line without a timestamp: {line[:80]!r}")
    return timestamp_nanoseconds(stamp), content


@dataclass
class LogCursor:
    """How far a reader got in one container's log, to resume where it stopped."""

    position: int = 0
    """Bytes of output (without timestamps) taken so far."""
    newest: int | None = None
    """The timestamp of the last line taken."""
    taken_at_newest: int = 0
    """How many lines taken bore that timestamp."""
    _to_skip_at_newest: int = 0

    def since_time(self) -> str | None:
        """Where a new stream starts: None the first time."""
        return None if self.newest is None else since_time(self.newest)

    def restart(self) -> None:
        """A new stream begins at `since_time()`: its first lines may have been taken."""
        self._to_skip_at_newest = self.taken_at_newest

    def take(self, stamp: int, content: bytes) -> bool:
        """Whether the line is new; if so the cursor moves past it."""
        if self.newest is not None and stamp <= self.newest:
            if stamp < self.newest:
                return False
            if self._to_skip_at_newest:
                self._to_skip_at_newest -= 1
                return False
            self.taken_at_newest += 1
        else:
            self.newest, self.taken_at_newest = stamp, 1
            self._to_skip_at_newest = 0
        self.position += len(content)
        return True
