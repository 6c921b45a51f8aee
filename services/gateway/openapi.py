"""Writes the gateway's OpenAPI document to `schemas/openapi.json`; `--check` fails if stale."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import ckrv.schemas
from ckrv.services.gateway.app import create_app

OPENAPI_FILE = Path(next(iter(ckrv.schemas.__path__))) / "openapi.json"


def render_openapi() -> str:
    return json.dumps(create_app().openapi(), indent=2, sort_keys=True) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the file is out of date")
    arguments = parser.parse_args(argv)
    current = render_openapi()
    existing = OPENAPI_FILE.read_text() if OPENAPI_FILE.exists() else None
    if arguments.check:
        if existing != current:
            print(f"{OPENAPI_FILE} is out of date: run `just schemas`", file=sys.stderr)
            return 1
        return 0
    if existing != current:
        OPENAPI_FILE.write_text(current)
        print(f"wrote {OPENAPI_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
