"""The worker's surroundings: git servers, and presigned upload URLs into SeaweedFS."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from uuid import UUID, uuid4

import pytest
from minio import Minio

from ckrv.services.stack.seaweed_server import SeaweedServer
from ckrv.services.worker.job_input import ARTIFACT_NAMES
from tests.git_servers import git_http_server, git_repositories, git_ssh_server

__all__ = ["git_http_server", "git_repositories", "git_ssh_server"]

UPLOAD_URL_LIFETIME = timedelta(minutes=15)


@dataclass(frozen=True)
class Uploads:
    """Presigned PUT URLs for one job's artifacts, and what the storage then holds."""

    client: Minio
    bucket: str
    job_id: UUID = field(default_factory=uuid4)

    def key(self, name: str) -> str:
        return f"jobs/{self.job_id}/1/{name}"

    @property
    def urls(self) -> dict[str, str]:
        return {
            name: self.client.presigned_put_object(
                self.bucket, self.key(name), expires=UPLOAD_URL_LIFETIME
            )
            for name in ARTIFACT_NAMES
        }

    def stored(self) -> set[str]:
        """The names of this job's artifacts in the bucket."""
        prefix = self.key("")
        return {
            str(item.object_name).removeprefix(prefix)
            for item in self.client.list_objects(self.bucket, prefix=prefix, recursive=True)
        }

    def read(self, name: str) -> bytes:
        response = self.client.get_object(self.bucket, self.key(name))
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()


@pytest.fixture
def uploads(s3_server: SeaweedServer) -> Uploads:
    """Upload URLs for a fresh job id."""
    return Uploads(s3_server.client(), s3_server.bucket)
