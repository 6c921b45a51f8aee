"""Uploads checked against SeaweedFS before a job succeeds: good, missing, wrong size, corrupt."""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any
from uuid import UUID, uuid4

import pytest
from prometheus_client import REGISTRY

from ckrv.services.artifacts.verification import (
    ARTIFACT_INVALID,
    RESULT_MISSING,
    RejectedResult,
    VerifiedResult,
    check_result,
)
from ckrv.services.stack.seaweed_server import SeaweedServer

pytestmark = pytest.mark.integration

DIFF = b"diff --git a/LIMITS.md b/LIMITS.md\n+rate limiter\n"
BUNDLE = b"# v2 git bundle\n" + bytes(range(256)) * 64


def digest(content: bytes) -> dict[str, Any]:
    return {"size_bytes": len(content), "sha256": hashlib.sha256(content).hexdigest()}


def result_json(job_id: UUID, artifacts: dict[str, Any]) -> bytes:
    result = {
        "job_id": str(job_id),
        "attempt": 1,
        "spec_id": "add-rate-limiter",
        "summary": "Changed 1 file.",
        "base_branch": "main",
        "base_commit": "a" * 40,
        "feature_branch": f"ckrv/{job_id.hex[:8]}",
        "head_commit": "b" * 40,
        "files_changed": ["LIMITS.md"],
        "insertions": 1,
        "deletions": 0,
        "agents": [],
        "metrics": {"duration_seconds": 1.5},
        "artifacts": artifacts,
    }
    return json.dumps(result).encode()


def store(s3: SeaweedServer, job_id: UUID, files: dict[str, bytes]) -> None:
    client = s3.client()
    for name, content in files.items():
        client.put_object(s3.bucket, f"jobs/{job_id}/1/{name}", io.BytesIO(content), len(content))


def uploaded(
    s3: SeaweedServer,
    *,
    stored: dict[str, bytes] | None = None,
    listed: dict[str, Any] | None = None,
) -> UUID:
    """A job whose attempt 1 stored `stored` (the good diff and bundle by default) and a
    result.json listing `listed` (their true digests by default)."""
    job_id = uuid4()
    files = {"diff.patch": DIFF, "repo.bundle": BUNDLE} if stored is None else stored
    artifacts = {name: digest(content) for name, content in files.items()}
    store(s3, job_id, {**files, "result.json": result_json(job_id, listed or artifacts)})
    return job_id


async def rejection(s3: SeaweedServer, job_id: UUID) -> RejectedResult:
    check = await check_result(s3.client(), s3.bucket, job_id, 1)
    assert isinstance(check, RejectedResult), check
    return check


def verified_count(name: str) -> float:
    return REGISTRY.get_sample_value("ckrv_artifacts_verified_total", {"name": name}) or 0.0


async def test_a_complete_upload_is_verified_with_every_artifact(s3_server: SeaweedServer) -> None:
    job_id = uploaded(s3_server)
    bundles_before = verified_count("repo.bundle")
    check = await check_result(s3_server.client(), s3_server.bucket, job_id, 1)
    assert isinstance(check, VerifiedResult)
    assert check.result.summary == "Changed 1 file."
    by_name = {artifact.name: artifact for artifact in check.artifacts}
    assert list(by_name) == ["result.json", "diff.patch", "repo.bundle"]
    assert by_name["repo.bundle"].size_bytes == len(BUNDLE)
    assert by_name["repo.bundle"].sha256 == hashlib.sha256(BUNDLE).hexdigest()
    assert by_name["diff.patch"].key == f"jobs/{job_id}/1/diff.patch"
    stored_result = s3_server.client().get_object(s3_server.bucket, f"jobs/{job_id}/1/result.json")
    try:
        assert by_name["result.json"].sha256 == hashlib.sha256(stored_result.read()).hexdigest()
    finally:
        stored_result.close()
        stored_result.release_conn()
    assert verified_count("repo.bundle") == bundles_before + 1


async def test_a_missing_result_json_is_a_missing_result(s3_server: SeaweedServer) -> None:
    job_id = uuid4()
    store(s3_server, job_id, {"diff.patch": DIFF, "repo.bundle": BUNDLE})
    rejected = await rejection(s3_server, job_id)
    assert rejected.error_code == RESULT_MISSING
    assert "result.json" in rejected.message


async def test_an_unreadable_result_json_is_a_missing_result(s3_server: SeaweedServer) -> None:
    job_id = uuid4()
    store(s3_server, job_id, {"result.json": b"{not json"})
    rejected = await rejection(s3_server, job_id)
    assert rejected.error_code == RESULT_MISSING
    assert rejected.message.startswith("result.json is not a valid result")


async def test_an_artifact_never_uploaded_fails_naming_it(s3_server: SeaweedServer) -> None:
    listed = {"diff.patch": digest(DIFF), "repo.bundle": digest(BUNDLE)}
    job_id = uploaded(s3_server, stored={"diff.patch": DIFF}, listed=listed)
    rejected = await rejection(s3_server, job_id)
    assert rejected.error_code == ARTIFACT_INVALID
    assert rejected.message == "repo.bundle is missing from storage: it was never uploaded"


async def test_an_artifact_of_the_wrong_size_fails_naming_both_sizes(
    s3_server: SeaweedServer,
) -> None:
    truncated = BUNDLE[:-100]
    listed = {"diff.patch": digest(DIFF), "repo.bundle": digest(BUNDLE)}
    job_id = uploaded(
        s3_server, stored={"diff.patch": DIFF, "repo.bundle": truncated}, listed=listed
    )
    rejected = await rejection(s3_server, job_id)
    assert rejected.error_code == ARTIFACT_INVALID
    assert rejected.message == (
        f"repo.bundle is {len(truncated)} bytes in storage, "
        f"but result.json lists {len(BUNDLE)} bytes"
    )


async def test_a_corrupt_artifact_of_the_right_size_fails_naming_both_digests(
    s3_server: SeaweedServer,
) -> None:
    corrupt = DIFF.replace(b"rate", b"RATE")
    listed = {"diff.patch": digest(DIFF), "repo.bundle": digest(BUNDLE)}
    job_id = uploaded(
        s3_server, stored={"diff.patch": corrupt, "repo.bundle": BUNDLE}, listed=listed
    )
    rejected = await rejection(s3_server, job_id)
    assert rejected.error_code == ARTIFACT_INVALID
    assert rejected.message == (
        f"diff.patch has SHA-256 {hashlib.sha256(corrupt).hexdigest()} in storage, "
        f"but result.json lists {hashlib.sha256(DIFF).hexdigest()}"
    )


async def test_a_result_must_list_the_diff_and_the_bundle_and_nothing_else(
    s3_server: SeaweedServer,
) -> None:
    unlisted = uploaded(s3_server, listed={"diff.patch": digest(DIFF)})
    assert (await rejection(s3_server, unlisted)).message == "result.json does not list repo.bundle"
    extra = {"diff.patch": digest(DIFF), "repo.bundle": digest(BUNDLE), "../x": digest(DIFF)}
    unknown = uploaded(s3_server, listed=extra)
    rejected = await rejection(s3_server, unknown)
    assert rejected.error_code == ARTIFACT_INVALID
    assert rejected.message == "result.json lists ../x, which a job does not upload"
