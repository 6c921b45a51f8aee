"""`schemas/asyncapi.yaml`: current, complete, and every reference resolves."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from ckrv.events.catalog import EVENT_TYPES
from ckrv.schemas import asyncapi


def document() -> dict[str, object]:
    loaded: dict[str, object] = yaml.safe_load(asyncapi.ASYNCAPI_FILE.read_text())
    return loaded


def test_the_checked_in_files_are_current() -> None:
    assert asyncapi.main(["--check"]) == 0


def test_every_event_type_has_its_channel_with_its_current_schema() -> None:
    channels = document()["channels"]
    assert isinstance(channels, dict)
    addresses = {channel["address"]: channel for channel in channels.values()}
    for event_type, event_class in EVENT_TYPES.items():
        channel = addresses[f"jobs.{{job_id}}.{event_type.removeprefix('job.')}"]
        (message,) = channel["messages"].values()
        assert message["name"] == event_type
        reference = message["payload"]["schema"]["$ref"]
        assert reference.endswith(f".v{event_class.CURRENT_VERSION}.json")
        schema = json.loads((asyncapi.SCHEMAS_DIR / reference).read_text())
        assert schema["properties"]["type"]["const"] == event_type
    assert "logs.{job_id}" in addresses
    assert "deadletter.{consumer}" in addresses


def test_every_operation_receives_on_a_channel_of_the_document() -> None:
    loaded = document()
    channels, operations = loaded["channels"], loaded["operations"]
    assert isinstance(channels, dict)
    assert isinstance(operations, dict)
    for operation in operations.values():
        assert operation["action"] == "receive"
        name = operation["channel"]["$ref"].removeprefix("#/channels/")
        assert name in channels


def test_the_contract_is_stated() -> None:
    info = document()["info"]
    assert isinstance(info, dict)
    for promise in ("At least once", "deduplicate on the event's `id`", "Ordered per job"):
        assert promise in info["description"]


def test_the_log_entry_schema_names_the_fields_clients_read() -> None:
    schema = json.loads(Path(asyncapi.LOG_ENTRY_FILE).read_text())
    assert {"timestamp", "level", "source", "message", "seq"} <= set(schema["required"])
