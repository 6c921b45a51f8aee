"""Presigned PUT URLs: how a workload stores its results without holding storage credentials."""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

from minio import Minio

from ckrv.services.common.storage import artifact_key
from ckrv.services.worker.job_input import ARTIFACT_NAMES, ArtifactName


def upload_urls(
    storage: Minio, bucket: str, job_id: UUID, attempt: int, valid_for: timedelta
) -> dict[ArtifactName, str]:
    """One URL per artifact of the attempt, each good for a PUT of its own key only.

    The keys are `jobs/<job_id>/<attempt>/<name>` (`artifact_key`). `valid_for` should
    cover the job's time limit: a URL that expired before the upload would fail a job
    that did its work. Signing is local computation (the client knows its region), so
    this never waits on the network.
    """
    return {
        name: storage.presigned_put_object(
            bucket, artifact_key(job_id, attempt, name), expires=valid_for
        )
        for name in ARTIFACT_NAMES
    }
