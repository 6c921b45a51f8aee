"""The event catalog: golden JSON of every type and version, and decoding that fails clearly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, get_args

import pytest

from ckrv.events.catalog import (
    EVENT_CLASSES,
    EVENT_TYPES,
    JobEvent,
    encode_event,
    parse_event,
)
from ckrv.events.envelope import Event
from ckrv.events.errors import (
    EventDecodeError,
    MalformedEvent,
    UnknownEventType,
    UnknownEventVersion,
)

FIXTURES = Path(__file__).parents[2] / "fixtures" / "events"
GOLDEN = sorted(FIXTURES.glob("*/v*.json"))
# Older versions are lifted on decoding, so only the current ones encode back to themselves.
CURRENT_GOLDEN = [
    path
    for path in GOLDEN
    if path.parent.name in EVENT_TYPES
    and path.stem == f"v{EVENT_TYPES[path.parent.name].CURRENT_VERSION}"
]

# The subject tokens of ARCHITECTURE.md, in lifecycle order.
SUBJECT_TOKENS = [
    "submitted",
    "queued",
    "rejected",
    "dispatched",
    "started",
    "phase-changed",
    "artifact-stored",
    "succeeded",
    "failed",
    "timed-out",
    "cancel-requested",
    "cancelled",
    "lost",
    "retried",
    "expired",
]


def golden(event_type: str, version: int = 1) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((FIXTURES / event_type / f"v{version}.json").read_text())
    return document


def fixture_id(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


def test_the_catalog_has_one_type_per_subject_token() -> None:
    assert list(EVENT_TYPES) == [f"job.{token}" for token in SUBJECT_TOKENS]


def test_the_union_and_the_type_map_list_the_same_classes() -> None:
    [union, _discriminator] = get_args(JobEvent)
    assert get_args(union) == EVENT_CLASSES == tuple(EVENT_TYPES.values())


@pytest.mark.parametrize("event_class", EVENT_CLASSES, ids=lambda cls: cls.__name__)
def test_a_class_writes_the_version_it_declares_current(event_class: type[Event]) -> None:
    assert event_class.model_fields["version"].default == event_class.CURRENT_VERSION


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_every_version_of_every_type_has_golden_json(event_type: str) -> None:
    current = EVENT_TYPES[event_type].CURRENT_VERSION
    expected = {f"v{version}.json" for version in range(1, current + 1)}

    assert {path.name for path in (FIXTURES / event_type).glob("v*.json")} == expected


def test_every_golden_json_is_of_a_type_in_the_catalog() -> None:
    assert {path.parent.name for path in GOLDEN} == set(EVENT_TYPES)


@pytest.mark.parametrize("path", GOLDEN, ids=fixture_id)
def test_golden_json_decodes_to_its_class(path: Path) -> None:
    raw = path.read_bytes()

    event = parse_event(raw)

    assert type(event) is EVENT_TYPES[path.parent.name]
    assert event.version == event.CURRENT_VERSION
    assert event.subject == f"jobs.{event.job_id}.{path.parent.name.removeprefix('job.')}"


@pytest.mark.parametrize("path", CURRENT_GOLDEN, ids=fixture_id)
def test_golden_json_of_the_current_version_encodes_back_to_itself(path: Path) -> None:
    document = json.loads(path.read_text())

    assert json.loads(encode_event(parse_event(document))) == document


def test_encoding_is_compact_json() -> None:
    encoded = encode_event(parse_event(golden("job.succeeded")))

    compact = json.dumps(json.loads(encoded), separators=(",", ":"), ensure_ascii=False)
    assert encoded == compact.encode()


@pytest.mark.parametrize("raw", [golden("job.queued"), json.dumps(golden("job.queued"))])
def test_decoding_takes_text_or_parsed_json(raw: str | dict[str, Any]) -> None:
    assert parse_event(raw) == parse_event(json.dumps(golden("job.queued")).encode())


def test_a_payload_ignores_fields_a_newer_producer_added() -> None:
    document = golden("job.lost")
    document["data"]["node_name"] = "ip-10-0-3-17"

    assert parse_event(document) == parse_event(golden("job.lost"))


def test_an_event_without_a_version_is_read_as_version_1() -> None:
    document = golden("job.started")
    del document["version"]

    assert parse_event(document) == parse_event(golden("job.started"))


def refusal(raw: bytes | str | dict[str, Any]) -> EventDecodeError:
    with pytest.raises(EventDecodeError) as refused:
        parse_event(raw)
    assert isinstance(refused.value, ValueError)
    return refused.value


def test_a_version_newer_than_this_build_is_named() -> None:
    refused = refusal({**golden("job.submitted"), "version": 7})

    assert isinstance(refused, UnknownEventVersion)
    assert str(refused) == "job.submitted version 7 is not known (this build reads versions 1..1)"
    assert (refused.event_type, refused.version) == ("job.submitted", 7)


def test_a_version_older_than_any_upcaster_reaches_is_named() -> None:
    refused = refusal({**golden("job.retried"), "version": 0})

    assert isinstance(refused, UnknownEventVersion)
    assert str(refused) == "job.retried version 0 is not known (this build reads versions 1..1)"


def test_an_unknown_type_is_named() -> None:
    refused = refusal({**golden("job.queued"), "type": "job.paused"})

    assert isinstance(refused, UnknownEventType)
    assert str(refused) == "event type 'job.paused' is not in the catalog"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"type": "job.queued",', "not valid JSON"),
        (b"\xff\xfe not text", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object, not list"),
        ('"job.queued"', "must be a JSON object, not str"),
        ({"version": 1}, "`type` must be a string, not None"),
        ({**golden("job.queued"), "version": "1"}, "`version` must be an integer, not '1'"),
        ({**golden("job.queued"), "version": True}, "`version` must be an integer, not True"),
    ],
)
def test_a_message_that_is_not_an_event_is_malformed(
    raw: bytes | str | dict[str, Any], message: str
) -> None:
    refused = refusal(raw)

    assert isinstance(refused, MalformedEvent)
    assert message in str(refused)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"data": {"attempt": 0, "reason": "node drained"}}, "data.attempt"),
        ({"actor": "watcher"}, "actor"),
        ({"occurred_at": "2025-03-14T09:33:17"}, "occurred_at"),
        ({"subject": "jobs.x.lost"}, "subject"),
    ],
)
def test_an_event_that_breaks_its_schema_is_malformed(change: dict[str, Any], field: str) -> None:
    refused = refusal({**golden("job.lost"), **change})

    assert isinstance(refused, MalformedEvent)
    assert str(refused).startswith("job.lost version 1 does not match its schema")
    assert field in str(refused)
