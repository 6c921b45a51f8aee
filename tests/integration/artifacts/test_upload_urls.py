"""Upload URLs: a workload stores each result with a plain PUT, and only where it is meant to."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import parse_qs, urlsplit
from uuid import uuid4

import httpx
import pytest

from ckrv.services.artifacts.uploads import upload_urls
from ckrv.services.stack.seaweed_server import SeaweedServer

pytestmark = pytest.mark.integration


def test_each_url_puts_its_own_object_only(s3_server: SeaweedServer) -> None:
    job_id = uuid4()
    urls = upload_urls(s3_server.client(), s3_server.bucket, job_id, 2, timedelta(minutes=40))
    assert set(urls) == {"diff.patch", "repo.bundle", "result.json"}
    diff_url = urlsplit(urls["diff.patch"])
    assert diff_url.path == f"/{s3_server.bucket}/jobs/{job_id}/2/diff.patch"
    assert parse_qs(diff_url.query)["X-Amz-Expires"] == ["2400"]

    # No credentials of its own: the URL is all a workload has.
    assert httpx.put(urls["diff.patch"], content=b"+limits\n").status_code == 200
    stored = s3_server.client().get_object(s3_server.bucket, f"jobs/{job_id}/2/diff.patch")
    try:
        assert stored.read() == b"+limits\n"
    finally:
        stored.close()
        stored.release_conn()

    elsewhere = diff_url._replace(path=f"/{s3_server.bucket}/jobs/{job_id}/1/diff.patch")
    assert httpx.put(elsewhere.geturl(), content=b"forged").status_code == 403
    listed = s3_server.client().list_objects(
        s3_server.bucket, prefix=f"jobs/{job_id}/", recursive=True
    )
    assert [item.object_name for item in listed] == [f"jobs/{job_id}/2/diff.patch"]
