"""Object storage for job results: the S3 client from the settings and where each object goes."""

from __future__ import annotations

from urllib.parse import urlsplit
from uuid import UUID

from minio import Minio

from ckrv.services.common.settings import CommonSettings


def artifact_key(job_id: UUID, attempt: int, name: str) -> str:
    """`jobs/<job_id>/<attempt>/<name>`: each attempt's results apart from the others'."""
    return f"jobs/{job_id}/{attempt}/{name}"


def storage_client(common: CommonSettings) -> Minio:
    """A client of the configured S3 endpoint.

    The region is given, so presigning a URL never asks the server for it: it is pure
    computation, fit for an event loop.
    """
    endpoint = urlsplit(common.s3_endpoint)
    return Minio(
        endpoint.netloc,
        access_key=common.s3_access_key.get_secret_value(),
        secret_key=common.s3_secret_key.get_secret_value(),
        secure=endpoint.scheme == "https",
        region=common.s3_region,
    )
