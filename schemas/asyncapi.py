"""Writes `schemas/asyncapi.yaml` (AsyncAPI 3) from the event catalog, or checks it is current.

The document names every subject internal services may consume: one channel per
job event type (`jobs.{job_id}.<event>`) whose message payload is that type's
JSON Schema in `schemas/events/`, the job log channel (`logs.{job_id}`, payload
`schemas/log-entry.json`) and the dead letters. It states the consumer contract:
at-least-once delivery, deduplication on the event id, order per job.

Run `python -m ckrv.schemas.asyncapi` after changing the catalog and commit the
result; `--check` (run by the lint) fails while the files differ from the code.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from ckrv.events.catalog import EVENT_TYPES
from ckrv.events.consumer import DEAD_LETTER_REASON
from ckrv.events.subjects import DEAD_LETTER_PREFIX, EVENT_TYPE_PREFIX, JOBS_STREAM, LOGS_STREAM
from ckrv.schemas.export import JSON_SCHEMA_DIALECT, schema_file_name
from ckrv.schemas.logs import LogEntry

SCHEMAS_DIR = Path(__file__).parent
ASYNCAPI_FILE = SCHEMAS_DIR / "asyncapi.yaml"
LOG_ENTRY_FILE = SCHEMAS_DIR / "log-entry.json"
SCHEMA_FORMAT = "application/schema+json;version=draft-2020-12"

CONTRACT = f"""\
Every change of a job is an event on the NATS JetStream stream `JOBS`, on the subject
`jobs.<job_id>.<event>`; each line a job's workload prints is a `LogEntry` on the `LOGS`
stream, subject `logs.<job_id>`. Internal services consume them with durable pull
consumers (the Python helper `ckrv.events.subscribe` makes one), under this contract:

- At least once: a message is delivered again until it is acknowledged. Handlers must
  be idempotent and deduplicate on the event's `id` (a UUID; the same id is also the
  message's `Nats-Msg-Id` header, which JetStream uses to drop re-published copies).
- Ordered per job: the events of one job are appended with optimistic concurrency on
  `jobs.<job_id>.*`, so they are stored, and delivered, in the order they happened.
  There is no order between different jobs.
- Versioned: `type` and `version` name the payload's schema; a consumer that meets a
  version it does not know should leave the message to a newer release (or dead-letter
  it), never guess. Fields are only ever added within a version.
- Unreadable messages, and those a handler gives up on, are parked on
  `deadletter.<consumer>` with the reason in the `{DEAD_LETTER_REASON}` header.
"""


def _event_channel(event_type: str, version: int) -> tuple[str, dict[str, Any], dict[str, Any]]:
    token = event_type.removeprefix(EVENT_TYPE_PREFIX)
    name = f"job-{token}"
    message = {
        "name": event_type,
        "title": f"{event_type} v{version}",
        "contentType": "application/json",
        "correlationId": {"location": "$message.payload#/job_id"},
        "payload": {
            "schemaFormat": SCHEMA_FORMAT,
            "schema": {"$ref": f"events/{schema_file_name(event_type, version)}"},
        },
    }
    channel = {
        "address": f"jobs.{{job_id}}.{token}",
        "description": f"`{event_type}` events of one job, on the `{JOBS_STREAM}` stream.",
        "parameters": {"job_id": {"description": "The job's id (a UUID)."}},
        "messages": {name: message},
    }
    operation = {
        "action": "receive",
        "channel": {"$ref": f"#/channels/{name}"},
        "summary": f"Consume `{event_type}` events (at least once; deduplicate on `id`).",
    }
    return name, channel, operation


def asyncapi_document() -> dict[str, Any]:
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for event_type, event_class in sorted(EVENT_TYPES.items()):
        name, channel, operation = _event_channel(event_type, event_class.CURRENT_VERSION)
        channels[name] = channel
        operations[f"receive-{name}"] = operation
    channels["job-logs"] = {
        "address": "logs.{job_id}",
        "description": f"A job's log, one `LogEntry` per line, on the `{LOGS_STREAM}` stream.",
        "parameters": {"job_id": {"description": "The job's id (a UUID)."}},
        "messages": {
            "log-entry": {
                "name": "LogEntry",
                "contentType": "application/json",
                "payload": {
                    "schemaFormat": SCHEMA_FORMAT,
                    "schema": {"$ref": LOG_ENTRY_FILE.name},
                },
            }
        },
    }
    operations["receive-job-logs"] = {
        "action": "receive",
        "channel": {"$ref": "#/channels/job-logs"},
        "summary": "Follow a job's log; `seq` numbers the lines from 1.",
    }
    channels["dead-letters"] = {
        "address": f"{DEAD_LETTER_PREFIX}.{{consumer}}",
        "description": "Messages a consumer could never handle, as they were, with the "
        f"reason in the `{DEAD_LETTER_REASON}` header.",
        "parameters": {"consumer": {"description": "The durable consumer's name."}},
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Chakravarti Cloud job events",
            "version": "1.0.0",
            "description": CONTRACT,
        },
        "defaultContentType": "application/json",
        "servers": {
            "nats": {
                "host": "nats:4222",
                "protocol": "nats",
                "description": "The cluster's NATS with JetStream (`CKRV_NATS_URL`).",
            }
        },
        "channels": channels,
        "operations": operations,
    }


class _Dumper(yaml.SafeDumper):
    """Writes text of several lines as a literal block, as a person would."""


def _text(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _text)


def render_asyncapi() -> str:
    header = "# Generated by `python -m ckrv.schemas.asyncapi` from the event catalog.\n"
    document = yaml.dump(asyncapi_document(), Dumper=_Dumper, sort_keys=False, width=100)
    return header + document


def render_log_entry_schema() -> str:
    schema = {"$schema": JSON_SCHEMA_DIALECT, **LogEntry.model_json_schema()}
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def generated_files() -> dict[Path, str]:
    return {ASYNCAPI_FILE: render_asyncapi(), LOG_ENTRY_FILE: render_log_entry_schema()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ckrv.schemas.asyncapi",
        description="Write schemas/asyncapi.yaml and schemas/log-entry.json.",
    )
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if stale")
    args = parser.parse_args(argv)
    stale = [
        path
        for path, text in generated_files().items()
        if not path.exists() or path.read_text(encoding="utf-8") != text
    ]
    if args.check:
        for path in stale:
            print(f"{path} is out of date: run `python -m ckrv.schemas.asyncapi`", file=sys.stderr)
        return 1 if stale else 0
    for path, text in generated_files().items():
        path.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
