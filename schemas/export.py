"""Writes the JSON Schema of every job event type and version to `schemas/events/`, or checks it.

Run `python -m ckrv.schemas.export` after changing the catalog, and commit the
result; `--check` (run by the tests) fails while the files differ from the code.
A schema of a version older than current cannot be regenerated (its model is
gone), so it is kept as written and only checked for presence.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ckrv.events.catalog import EVENT_TYPES
from ckrv.events.envelope import Event

EVENTS_DIR = Path(__file__).parent / "events"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def schema_file_name(event_type: str, version: int) -> str:
    return f"{event_type}.v{version}.json"


def render_schema(event_class: type[Event]) -> str:
    """The schema file's exact text: sorted keys and a trailing newline, so output is stable."""
    schema = {"$schema": JSON_SCHEMA_DIALECT, **event_class.model_json_schema()}
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def current_schemas() -> dict[str, str]:
    """File name to text for the current version of every event type."""
    return {
        schema_file_name(event_type, event_class.CURRENT_VERSION): render_schema(event_class)
        for event_type, event_class in EVENT_TYPES.items()
    }


def past_schema_file_names() -> set[str]:
    return {
        schema_file_name(event_type, version)
        for event_type, event_class in EVENT_TYPES.items()
        for version in range(1, event_class.CURRENT_VERSION)
    }


@dataclass(frozen=True)
class SchemaDrift:
    """How a schema directory differs from the catalog. Empty means current."""

    stale: tuple[str, ...]
    missing: tuple[str, ...]
    extra: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.stale or self.missing or self.extra)

    def describe(self) -> list[str]:
        return [
            *(f"stale: {name}" for name in self.stale),
            *(f"missing: {name}" for name in self.missing),
            *(f"extra: {name}" for name in self.extra),
        ]


def find_drift(directory: Path) -> SchemaDrift:
    current = current_schemas()
    expected = current.keys() | past_schema_file_names()
    present = {path.name for path in directory.glob("*.json")}
    stale = [
        name
        for name, text in current.items()
        if name in present and (directory / name).read_text(encoding="utf-8") != text
    ]
    return SchemaDrift(
        stale=tuple(sorted(stale)),
        missing=tuple(sorted(expected - present)),
        extra=tuple(sorted(present - expected)),
    )


def write_schemas(directory: Path) -> SchemaDrift:
    """Bring `directory` in line with the catalog; returns the drift it could not repair."""
    directory.mkdir(parents=True, exist_ok=True)
    drift = find_drift(directory)
    current = current_schemas()
    for name in (*drift.stale, *drift.missing):
        if name in current:
            (directory / name).write_text(current[name], encoding="utf-8")
    for name in drift.extra:
        (directory / name).unlink()
    return find_drift(directory)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ckrv.schemas.export",
        description="Write the JSON Schema of every job event type and version.",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 listing stale, missing and extra files",
    )
    parser.add_argument(
        "--dir", type=Path, default=EVENTS_DIR, help="schema directory (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    directory: Path = args.dir

    if args.check:
        drift = find_drift(directory)
        if drift:
            print(f"event schemas in {directory} are out of date:", file=sys.stderr)
            for line in drift.describe():
                print(f"  {line}", file=sys.stderr)
            print("run `python -m ckrv.schemas.export` to regenerate them", file=sys.stderr)
            return 1
        return 0

    unrepaired = write_schemas(directory)
    if unrepaired:
        print(f"cannot regenerate past event schemas in {directory}:", file=sys.stderr)
        for line in unrepaired.describe():
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
