"""job.json and the credential file: built by the dispatcher, read by the worker."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from pydantic import ValidationError

from ckrv.events.catalog import feature_branch_name
from ckrv.services.worker.job_input import (
    CREDENTIAL_FILE,
    JOB_FILE,
    WorkerInput,
    read_worker_input,
)
from ckrv.services.worker.outcome import ExitCode, InfrastructureFailure
from tests.unit.worker.worker_runs import UNUSED_UPLOAD_URLS, write_input

JOB_ID = UUID("0b5f6c1e-8d3a-4c7e-9a51-2f0e4b7d9c11")
TOKEN = "ghp_0123456789abcdefghijklmnopqrstuvwxyz"


def job_fields(**overrides: Any) -> dict[str, Any]:
    return {
        "job_id": str(JOB_ID),
        "attempt": 2,
        "spec_content": "id: demo\noverview: Add notes.\n",
        "git_repo_url": "https://github.com/acme/app.git",
        "git_base_branch": "main",
        "time_limit_seconds": 600,
        "upload_urls": UNUSED_UPLOAD_URLS,
        "credential": {"provider": "github", "credential_type": "pat"},
        **overrides,
    }


def test_the_feature_branch_comes_from_the_job_id() -> None:
    job = WorkerInput.model_validate(job_fields())

    assert job.feature_branch == feature_branch_name(JOB_ID) == "ckrv/0b5f6c1e"


def test_the_files_carry_the_credential_apart_from_job_json(tmp_path: Path) -> None:
    job = WorkerInput.model_validate(job_fields())

    files = job.files(TOKEN)

    assert set(files) == {JOB_FILE, CREDENTIAL_FILE}
    assert TOKEN.encode() not in files[JOB_FILE]
    assert files[CREDENTIAL_FILE] == TOKEN.encode()
    read_job, credential = read_worker_input(write_input(tmp_path / "input", job, TOKEN))
    assert read_job == job
    assert credential == TOKEN


def test_a_public_repository_needs_no_credential_file(tmp_path: Path) -> None:
    job = WorkerInput.model_validate(job_fields(credential=None))

    assert set(job.files()) == {JOB_FILE}
    assert read_worker_input(write_input(tmp_path / "input", job)) == (job, None)


@pytest.mark.parametrize(
    ("credential", "value"),
    [({"provider": "github", "credential_type": "pat"}, None), (None, TOKEN)],
)
def test_a_credential_value_goes_with_a_credential_kind_only(
    credential: dict[str, str] | None, value: str | None
) -> None:
    job = WorkerInput.model_validate(job_fields(credential=credential))

    with pytest.raises(ValueError, match="exactly when"):
        job.files(value)


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"upload_urls": {"diff.patch": "https://s3/x"}}, "no upload URL for repo.bundle"),
        (
            {"upload_urls": {**UNUSED_UPLOAD_URLS, "result.json": "ftp://s3/x"}},
            "not an http(s) URL",
        ),
        ({"git_base_branch": "main..x"}, "not a valid branch name"),
        ({"time_limit_seconds": 0}, "greater than 0"),
        ({"attempt": 0}, "greater than or equal to 1"),
        ({"agents": []}, "at least one agent"),
        (
            {"ssh_host_keys": {"policy": "strict"}},
            "the `strict` host key policy needs `known_hosts` lines",
        ),
        ({"credential": {"provider": "github", "credential_type": "password"}}, "pat"),
    ],
)
def test_a_bad_job_is_refused_naming_the_problem(overrides: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError) as raised:
        WorkerInput.model_validate(job_fields(**overrides))

    assert problem in str(raised.value)


def test_fields_a_newer_dispatcher_adds_are_ignored() -> None:
    job = WorkerInput.model_validate(job_fields(priority="high"))

    assert "priority" not in job.model_dump()


def test_unreadable_or_invalid_input_is_an_infrastructure_failure(tmp_path: Path) -> None:
    with pytest.raises(InfrastructureFailure) as missing:
        read_worker_input(tmp_path)
    assert missing.value.reason == "input_unreadable"
    assert missing.value.exit_code == ExitCode.INFRASTRUCTURE_ERROR

    (tmp_path / JOB_FILE).write_text("{not json")
    with pytest.raises(InfrastructureFailure) as not_json:
        read_worker_input(tmp_path)
    assert not_json.value.reason == "input_invalid"

    (tmp_path / JOB_FILE).write_text(json.dumps(job_fields(time_limit_seconds=-1)))
    with pytest.raises(InfrastructureFailure) as invalid:
        read_worker_input(tmp_path)
    assert invalid.value.reason == "input_invalid"
    assert "time_limit_seconds: Input should be greater than 0" in invalid.value.message


def test_a_named_credential_must_be_there(tmp_path: Path) -> None:
    (tmp_path / JOB_FILE).write_text(json.dumps(job_fields()))

    with pytest.raises(InfrastructureFailure, match="names a pat credential") as missing:
        read_worker_input(tmp_path)
    assert missing.value.reason == "input_unreadable"

    (tmp_path / CREDENTIAL_FILE).write_text("\n")
    with pytest.raises(InfrastructureFailure, match="is empty"):
        read_worker_input(tmp_path)
