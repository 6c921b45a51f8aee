"""Workload requests: a deterministic name, and Kubernetes' rules for every backend."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import pytest
from pydantic import ValidationError

from ckrv.events.catalog import workload_name
from ckrv.services.runners.base import WorkloadRequest

JOB_ID = UUID("0d9e3c1a-6f4b-4e8a-9c2d-7b1e5f3a8c60")


def request(**fields: Any) -> WorkloadRequest:
    defaults: dict[str, Any] = {
        "job_id": JOB_ID,
        "attempt": 2,
        "command": ("ckrv-worker", "run"),
        "time_limit_seconds": 600,
    }
    return WorkloadRequest(**defaults | fields)


def test_the_name_is_the_workload_name_of_the_job_and_attempt() -> None:
    assert request().name == workload_name(JOB_ID, 2) == f"ckrv-job-{JOB_ID}-2"


def test_a_valid_request_keeps_what_it_was_given() -> None:
    valid = request(
        input_files={"spec.md": b"# spec", "git-credential": b"token", ".hidden": b""},
        env={"CKRV_LOG_FORMAT": "json", "_private": ""},
        labels={"ckrv.dev/job-id": str(JOB_ID), "tier": ""},
        memory_limit_bytes=2**30,
        cpu_limit=0.5,
    )
    assert valid.input_files["git-credential"] == b"token"
    assert valid.labels["tier"] == ""


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"attempt": 0}, "attempt"),
        ({"command": ()}, "command"),
        ({"command": ("", "run")}, "program"),
        ({"command": ("sh", "-c", "a\0b")}, "NUL"),
        ({"input_files": {"../secret": b""}}, "input file name"),
        ({"input_files": {"a/b": b""}}, "input file name"),
        ({"input_files": {"..": b""}}, "input file name"),
        ({"input_files": {"": b""}}, "input file name"),
        ({"env": {"1ST": "x"}}, "environment variable name"),
        ({"env": {"A=B": "x"}}, "environment variable name"),
        ({"env": {"CKRV_INPUT_DIR": "/elsewhere"}}, "set by the runner"),
        ({"env": {"CKRV_WORKSPACE": "/elsewhere"}}, "set by the runner"),
        ({"labels": {"-job": "x"}}, "label name"),
        ({"labels": {"Example.com/job": "x"}}, "label name"),
        ({"labels": {"job": "x" * 64}}, "label value"),
        ({"labels": {"job": "a b"}}, "label value"),
        ({"time_limit_seconds": 0}, "time_limit_seconds"),
        ({"grace_seconds": -1}, "grace_seconds"),
        ({"memory_limit_bytes": 0}, "memory_limit_bytes"),
        ({"cpu_limit": 0}, "cpu_limit"),
        ({"unknown": 1}, "unknown"),
    ],
)
def test_invalid_requests_are_refused_with_the_reason(
    fields: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(ValidationError, match=complaint):
        request(**fields)
