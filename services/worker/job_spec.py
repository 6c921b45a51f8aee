"""What the worker reads from a spec beyond its id: the `script` and `verify` command lists.

```yaml
id: add-notes
overview: Add a notes file.
script:            # the `script` agent runs these, in order, in the clone
  - echo "notes" > NOTES.md
verify:            # run after the agents; a failing one fails the job with exit code 3
  - test -s NOTES.md
```

A single string counts as a list of one command.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from ckrv.schemas.spec import SpecError, parse_spec
from ckrv.services.worker.outcome import JobFailure

# libyaml's loader when the wheel has it, as the gateway parses specs.
_SAFE_LOADER = yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader


@dataclass(frozen=True)
class JobSpec:
    spec_id: str
    title: str
    """The first line of the spec's overview (or goal), for the commit message."""
    script: tuple[str, ...]
    verify: tuple[str, ...]


def _commands(document: dict[str, Any], key: str) -> tuple[str, ...]:
    value = document.get(key)
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(
        isinstance(command, str) and command.strip() for command in value
    ):
        raise JobFailure("spec_invalid", f"the spec's `{key}` must be a list of shell commands")
    return tuple(value)


def read_job_spec(content: str) -> JobSpec:
    """The spec's id, title and command lists; `JobFailure` (`spec_invalid`) naming a problem."""
    try:
        spec = parse_spec(content)
    except SpecError as error:
        raise JobFailure("spec_invalid", str(error)) from error
    # parse_spec has checked that the text is a YAML mapping.
    document: dict[str, Any] = yaml.load(content, Loader=_SAFE_LOADER)  # noqa: S506 - safe loaders
    text = (spec.overview or spec.goal or "").strip()
    return JobSpec(
        spec_id=spec.id,
        title=text.splitlines()[0] if text else spec.id,
        script=_commands(document, "script"),
        verify=_commands(document, "verify"),
    )
