"""Service logs are one JSON object per line, with the service name and the call's extras."""

from __future__ import annotations

import json
import logging

from ckrv.services.common.logging import JsonFormatter


def record(message: str, **extra: object) -> logging.LogRecord:
    entry = logging.LogRecord("ckrv.dispatcher", logging.WARNING, __file__, 1, message, (), None)
    entry.__dict__.update(extra)
    return entry


def test_a_line_carries_level_service_logger_message_and_extras() -> None:
    line = JsonFormatter("dispatcher").format(
        record("job admitted", job_id="j-1", position=3, color_message="\x1b[1mjob\x1b[0m")
    )
    entry = json.loads(line)
    assert entry["level"] == "warning"
    assert entry["service"] == "dispatcher"
    assert entry["logger"] == "ckrv.dispatcher"
    assert entry["message"] == "job admitted"
    assert entry["job_id"] == "j-1"
    assert entry["position"] == 3
    assert entry["timestamp"].endswith("+00:00")
    # uvicorn's coloured duplicate of the message is noise in a log pipeline.
    assert "color_message" not in entry
    assert "\n" not in line


def test_an_exception_is_kept_with_its_traceback_on_the_same_line() -> None:
    try:
        raise RuntimeError("database unavailable")
    except RuntimeError:
        import sys

        entry = record("handler failed")
        entry.exc_info = sys.exc_info()
    line = JsonFormatter("notifier").format(entry)
    assert "\n" not in line
    parsed = json.loads(line)
    assert "RuntimeError: database unavailable" in parsed["exception"]
    assert "Traceback" in parsed["exception"]


def test_values_json_cannot_encode_are_written_as_text() -> None:
    entry = json.loads(JsonFormatter("gateway").format(record("odd", path=object())))
    assert entry["path"].startswith("<object object")
