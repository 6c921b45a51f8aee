"""Why a message on the JOBS stream cannot be decoded into an event; consumers dead-letter these."""

from __future__ import annotations


class EventDecodeError(ValueError):
    """A message that no retry can turn into an event of this build's catalog."""


class MalformedEvent(EventDecodeError):
    """The message is not JSON, not an object, or does not match its type's schema."""


class UnknownEventType(EventDecodeError):
    """The message's `type` is not in this build's catalog."""

    def __init__(self, event_type: str) -> None:
        super().__init__(f"event type {event_type!r} is not in the catalog")
        self.event_type = event_type


class UnknownEventVersion(EventDecodeError):
    """The message's version is newer than this build, or older with no upcaster path."""

    def __init__(self, event_type: str, version: int, readable: range) -> None:
        super().__init__(
            f"{event_type} version {version} is not known "
            f"(this build reads versions {readable.start}..{readable.stop - 1})"
        )
        self.event_type = event_type
        self.version = version
        self.readable = readable
