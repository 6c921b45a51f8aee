"""Upcasters: lift a stored event's raw JSON one version at a time to the version this build reads.

The JOBS stream keeps events for months, so a consumer meets payloads written by
older builds. When a type's payload changes incompatibly its version is bumped
and an upcaster `(type, from_version)` is registered on `UPCASTERS`; decoding
then chains upcasters until the raw event reaches the catalog's current version.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

from ckrv.events.errors import MalformedEvent, UnknownEventType, UnknownEventVersion

# Takes a raw event (a private copy it may change) at version n and returns it at version n + 1;
# the registry stamps the new version.
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


class UpcasterRegistry:
    """The upcasters known to a build, keyed by event type and the version they lift from."""

    def __init__(self) -> None:
        self._upcasters: dict[tuple[str, int], Upcaster] = {}

    def register(self, event_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Decorator: `upcaster` lifts `event_type` from `from_version` to `from_version + 1`."""
        if from_version < 1:
            raise ValueError(f"versions start at 1, not {from_version}")
        key = (event_type, from_version)

        def add(upcaster: Upcaster) -> Upcaster:
            if key in self._upcasters:
                raise ValueError(
                    f"{event_type} already has an upcaster from version {from_version}"
                )
            self._upcasters[key] = upcaster
            return upcaster

        return add

    def readable_versions(self, event_type: str, current_version: int) -> range:
        """The versions of `event_type` that an unbroken chain of upcasters lifts to current."""
        oldest = current_version
        while (event_type, oldest - 1) in self._upcasters:
            oldest -= 1
        return range(oldest, current_version + 1)

    def upcast(self, raw: Mapping[str, Any], current_versions: Mapping[str, int]) -> dict[str, Any]:
        """Lift `raw` to its type's version in `current_versions`; the input is never changed.

        Raises `MalformedEvent` if `type` or `version` is missing or mistyped,
        `UnknownEventType` if the type is not in `current_versions`, and
        `UnknownEventVersion` if the version is newer than current or no chain reaches it.
        """
        event_type = raw.get("type")
        if not isinstance(event_type, str):
            raise MalformedEvent(f"event `type` must be a string, not {event_type!r}")
        if event_type not in current_versions:
            raise UnknownEventType(event_type)
        # A missing version means 1: the envelope's default, as the first producers wrote it.
        version = raw.get("version", 1)
        if isinstance(version, bool) or not isinstance(version, int):
            raise MalformedEvent(f"{event_type} `version` must be an integer, not {version!r}")

        current_version = current_versions[event_type]
        readable = self.readable_versions(event_type, current_version)
        if version not in readable:
            raise UnknownEventVersion(event_type, version, readable)

        lifted = copy.deepcopy(dict(raw))
        for from_version in range(version, current_version):
            lifted = self._upcasters[(event_type, from_version)](lifted)
            lifted["version"] = from_version + 1
        return lifted


# The registry the catalog decodes with. Upcasters for past versions of catalog types are
# registered here, next to it, e.g. `@UPCASTERS.register("job.submitted", from_version=1)`.
UPCASTERS = UpcasterRegistry()
