"""Verification of an attempt's uploads before its job may succeed.

A workload that succeeded has uploaded `diff.patch`, `repo.bundle` and, last,
`result.json`, which lists the size and SHA-256 of the other two. Each stored
object is checked against that list (its size from a stat, its digest by
streaming it), so a job only succeeds once its results are downloadable as they
were made. The outcome is a `VerifiedResult` (with what to record of each
artifact, `result.json` included) or a `RejectedResult` saying what is wrong.

Storage that cannot be reached raises instead: that says nothing about the
job, and the check is worth repeating later.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from uuid import UUID

from minio import Minio
from minio.error import S3Error
from prometheus_client import Counter
from pydantic import ValidationError

from ckrv.events.catalog import JobArtifactStoredData
from ckrv.services.common.storage import artifact_key
from ckrv.services.worker.job_input import ARTIFACT_NAMES
from ckrv.services.worker.result import ArtifactDigest, JobResult

RESULT_NAME = "result.json"
# The artifacts `result.json` lists; it cannot list its own digest.
LISTED_NAMES = tuple(name for name in ARTIFACT_NAMES if name != RESULT_NAME)
RESULT_MISSING = "result_missing"
ARTIFACT_INVALID = "artifact_invalid"
# A result lists paths and numbers; far beyond this it is not a result, and is not read whole.
MAX_RESULT_BYTES = 16 * 1024 * 1024
_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchObject"})
_CHUNK_BYTES = 1024 * 1024

VERIFIED = Counter(
    "ckrv_artifacts_verified_total", "Stored artifacts found as result.json lists them.", ["name"]
)
VERIFIED_BYTES = Counter(
    "ckrv_artifacts_verified_bytes_total", "Bytes of the stored artifacts that were verified."
)
REJECTED = Counter(
    "ckrv_artifacts_rejected_results_total",
    "Results that failed their job: result.json missing, or an artifact missing or corrupt.",
    ["error_code"],
)


@dataclass(frozen=True)
class VerifiedResult:
    """A result whose every artifact is stored as `result.json` says."""

    result: JobResult
    artifacts: tuple[JobArtifactStoredData, ...]


@dataclass(frozen=True)
class RejectedResult:
    """Why an attempt's result cannot be accepted, as its job's failure will say."""

    error_code: str
    message: str


ResultCheck = VerifiedResult | RejectedResult


class _Rejected(Exception):
    def __init__(self, error_code: str, message: str) -> None:
        super().__init__(message)
        self.rejection = RejectedResult(error_code, message)


async def check_result(storage: Minio, bucket: str, job_id: UUID, attempt: int) -> ResultCheck:
    """Read the attempt's `result.json` and check every artifact it lists against storage."""
    try:
        verified = await asyncio.to_thread(_verify, storage, bucket, job_id, attempt)
    except _Rejected as rejected:
        REJECTED.labels(rejected.rejection.error_code).inc()
        return rejected.rejection
    for artifact in verified.artifacts:
        VERIFIED.labels(artifact.name).inc()
        VERIFIED_BYTES.inc(artifact.size_bytes)
    return verified


def _verify(storage: Minio, bucket: str, job_id: UUID, attempt: int) -> VerifiedResult:
    content = _read_result(storage, bucket, artifact_key(job_id, attempt, RESULT_NAME))
    try:
        result = JobResult.model_validate_json(content)
    except ValidationError as error:
        raise _Rejected(
            RESULT_MISSING, f"{RESULT_NAME} is not a valid result: {_first_problem(error)}"
        ) from None
    unexpected = sorted(set(result.artifacts) - set(LISTED_NAMES))
    if unexpected:
        raise _Rejected(
            ARTIFACT_INVALID,
            f"{RESULT_NAME} lists {', '.join(unexpected)}, which a job does not upload",
        )
    stored = [
        _artifact(job_id, attempt, RESULT_NAME, len(content), hashlib.sha256(content).hexdigest())
    ]
    for name in LISTED_NAMES:
        listed = result.artifacts.get(name)
        if listed is None:
            raise _Rejected(ARTIFACT_INVALID, f"{RESULT_NAME} does not list {name}")
        _check_stored(storage, bucket, artifact_key(job_id, attempt, name), name, listed)
        stored.append(_artifact(job_id, attempt, name, listed.size_bytes, listed.sha256))
    return VerifiedResult(result, tuple(stored))


def _read_result(storage: Minio, bucket: str, key: str) -> bytes:
    try:
        response = storage.get_object(bucket, key)
    except S3Error as error:
        if error.code in _MISSING_CODES:
            raise _Rejected(
                RESULT_MISSING, f"the job's workload ended without uploading {RESULT_NAME}"
            ) from None
        raise
    try:
        content = response.read(MAX_RESULT_BYTES + 1)
    finally:
        response.close()
        response.release_conn()
    if len(content) > MAX_RESULT_BYTES:
        raise _Rejected(
            RESULT_MISSING, f"{RESULT_NAME} is over {MAX_RESULT_BYTES} bytes: not a result"
        )
    return content


def _check_stored(storage: Minio, bucket: str, key: str, name: str, listed: ArtifactDigest) -> None:
    """Raise `_Rejected` unless the object at `key` has the listed size and digest."""
    try:
        size = storage.stat_object(bucket, key).size
    except S3Error as error:
        if error.code in _MISSING_CODES:
            raise _Rejected(
                ARTIFACT_INVALID, f"{name} is missing from storage: it was never uploaded"
            ) from None
        raise
    if size != listed.size_bytes:
        raise _Rejected(
            ARTIFACT_INVALID,
            f"{name} is {size} bytes in storage, but {RESULT_NAME} lists {listed.size_bytes} bytes",
        )
    sha256 = _stored_sha256(storage, bucket, key)
    if sha256 != listed.sha256:
        raise _Rejected(
            ARTIFACT_INVALID,
            f"{name} has SHA-256 {sha256} in storage, but {RESULT_NAME} lists {listed.sha256}",
        )


def _stored_sha256(storage: Minio, bucket: str, key: str) -> str:
    digest = hashlib.sha256()
    response = storage.get_object(bucket, key)
    try:
        for chunk in response.stream(_CHUNK_BYTES):
            digest.update(chunk)
    finally:
        response.close()
        response.release_conn()
    return digest.hexdigest()


def _artifact(
    job_id: UUID, attempt: int, name: str, size_bytes: int, sha256: str
) -> JobArtifactStoredData:
    return JobArtifactStoredData(
        attempt=attempt,
        name=name,
        key=artifact_key(job_id, attempt, name),
        size_bytes=size_bytes,
        sha256=sha256,
    )


def _first_problem(error: ValidationError) -> str:
    problem = error.errors()[0]
    where = ".".join(str(part) for part in problem["loc"])
    return f"{where}: {problem['msg']}" if where else str(problem["msg"])
