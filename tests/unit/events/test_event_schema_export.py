"""The checked-in event JSON Schemas: current in the repository, and the exporter's drift report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ckrv.events.catalog import EVENT_TYPES, JobSubmitted
from ckrv.schemas.export import current_schemas, main


def test_the_checked_in_schemas_are_current() -> None:
    assert main(["--check"]) == 0


def test_there_is_one_schema_per_type_at_its_current_version() -> None:
    assert sorted(current_schemas()) == sorted(
        f"{event_type}.v1.json" for event_type in EVENT_TYPES
    )


def test_schema_text_is_deterministic() -> None:
    first, second = current_schemas(), current_schemas()

    assert first == second
    for text in first.values():
        assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"


def test_a_schema_describes_the_type_and_its_payload() -> None:
    schema = json.loads(current_schemas()["job.submitted.v1.json"])

    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["properties"]["type"]["const"] == "job.submitted"
    assert schema["properties"]["version"]["const"] == 1
    submitted = schema["$defs"]["JobSubmittedData"]["properties"]
    assert all(field.get("description") for field in submitted.values())


def test_an_empty_directory_is_reported_then_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--check", "--dir", str(tmp_path)]) == 1
    assert "missing: job.submitted.v1.json" in capsys.readouterr().err

    assert main(["--dir", str(tmp_path)]) == 0

    assert main(["--check", "--dir", str(tmp_path)]) == 0
    assert (tmp_path / "job.queued.v1.json").read_text() == current_schemas()["job.queued.v1.json"]


def test_stale_and_extra_files_are_reported_then_repaired(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["--dir", str(tmp_path)])
    (tmp_path / "job.failed.v1.json").write_text("{}\n")
    (tmp_path / "job.paused.v1.json").write_text("{}\n")

    assert main(["--check", "--dir", str(tmp_path)]) == 1
    report = capsys.readouterr().err
    assert "stale: job.failed.v1.json" in report
    assert "extra: job.paused.v1.json" in report

    assert main(["--dir", str(tmp_path)]) == 0
    assert not (tmp_path / "job.paused.v1.json").exists()
    assert main(["--check", "--dir", str(tmp_path)]) == 0


def test_a_past_version_is_kept_but_cannot_be_regenerated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["--dir", str(tmp_path)])
    past = (tmp_path / "job.submitted.v1.json").read_text()
    monkeypatch.setattr(JobSubmitted, "CURRENT_VERSION", 2)

    assert main(["--dir", str(tmp_path)]) == 0
    assert (tmp_path / "job.submitted.v1.json").read_text() == past
    assert (tmp_path / "job.submitted.v2.json").exists()

    (tmp_path / "job.submitted.v1.json").unlink()
    assert main(["--dir", str(tmp_path)]) == 1
    assert "missing: job.submitted.v1.json" in capsys.readouterr().err
