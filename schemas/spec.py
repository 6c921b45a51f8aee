"""The spec file a user submits: YAML with an `id` and an `overview` or `goal`."""

from __future__ import annotations

import re
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

MAX_SPEC_BYTES = 256 * 1024
# libyaml's loader (in PyYAML's wheels) parses ten times faster than the pure-Python one,
# which holds the gateway's event loop ~250 ms on a spec of the largest size.
_SAFE_LOADER = yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader
SPEC_ID_PATTERN = r"^[A-Za-z0-9_-]{1,100}$"


class SpecError(ValueError):
    """The spec cannot be accepted; the message says why, for the user."""


class Spec(BaseModel):
    """The fields of a spec the service reads; the agents read the whole text."""

    model_config = ConfigDict(frozen=True, extra="allow")

    id: str = Field(pattern=SPEC_ID_PATTERN, description="Identifier of the spec.")
    overview: str | None = Field(default=None, description="What the change is about.")
    goal: str | None = Field(default=None, description="What the change must achieve.")


def parse_spec(content: str) -> Spec:
    """Check size and shape of a spec file's text; raise `SpecError` naming the problem."""
    size = len(content.encode())
    if size > MAX_SPEC_BYTES:
        raise SpecError(f"spec is {size} bytes; the limit is {MAX_SPEC_BYTES} bytes (256 KiB)")
    try:
        document: Any = yaml.load(content, Loader=_SAFE_LOADER)  # noqa: S506 - safe loaders
    except yaml.YAMLError as error:
        raise SpecError(f"spec is not valid YAML: {error}") from error
    if not isinstance(document, dict):
        raise SpecError("spec must be a YAML mapping with at least `id` and `overview` or `goal`")
    spec_id = document.get("id")
    if not isinstance(spec_id, str | int) or not re.fullmatch(SPEC_ID_PATTERN, str(spec_id)):
        raise SpecError("spec needs an `id` of letters, digits, `_` and `-` (at most 100)")
    overview, goal = document.get("overview"), document.get("goal")
    if not any(isinstance(text, str) and text.strip() for text in (overview, goal)):
        raise SpecError("spec needs a non-empty `overview` or `goal`")
    return Spec(
        id=str(spec_id),
        overview=overview if isinstance(overview, str) else None,
        goal=goal if isinstance(goal, str) else None,
    )
