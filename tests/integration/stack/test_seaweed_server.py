"""SeaweedServer: signed S3 works, unsigned or wrongly signed requests fail, data persists."""

from __future__ import annotations

import io
import stat
from pathlib import Path

import httpx
import pytest
from minio.error import S3Error

from ckrv.services.stack.ports import is_port_free
from ckrv.services.stack.seaweed_server import SeaweedPorts, SeaweedServer
from tests.processes import process_tree, survivors

pytestmark = pytest.mark.integration


def put(server: SeaweedServer, key: str, data: bytes) -> None:
    server.client().put_object(
        bucket_name=server.bucket, object_name=key, data=io.BytesIO(data), length=len(data)
    )


def get(server: SeaweedServer, key: str) -> bytes:
    response = server.client().get_object(bucket_name=server.bucket, object_name=key)
    try:
        return response.read()
    finally:
        response.close()
        response.release_conn()


def sockets_left_in_tmp(ports: SeaweedPorts) -> list[Path]:
    """weed's Unix sockets in /tmp that are named after one of `ports`."""
    ours = {str(port) for port in ports.by_owner().values()}
    return [
        path for path in Path("/tmp").glob("seaweedfs-*.sock") if path.stem.split("-")[-1] in ours
    ]


def test_signed_requests_only(s3_server: SeaweedServer) -> None:
    put(s3_server, "probe/signed.txt", b"signed")
    assert get(s3_server, "probe/signed.txt") == b"signed"

    anonymous = httpx.get(f"{s3_server.endpoint}/{s3_server.bucket}/probe/signed.txt")
    assert anonymous.status_code == httpx.codes.FORBIDDEN
    anonymous_put = httpx.put(
        f"{s3_server.endpoint}/{s3_server.bucket}/probe/anonymous.txt", content=b"x"
    )
    assert anonymous_put.status_code == httpx.codes.FORBIDDEN

    wrong_secret = s3_server.client(secret_key="not-the-secret")
    with pytest.raises(S3Error) as refused:
        wrong_secret.get_object(bucket_name=s3_server.bucket, object_name="probe/signed.txt")
    assert refused.value.code in {"AccessDenied", "SignatureDoesNotMatch"}
    unknown_key = s3_server.client(access_key="NOSUCHKEY", secret_key="whatever")
    with pytest.raises(S3Error):
        unknown_key.bucket_exists(bucket_name=s3_server.bucket)


async def test_bucket_and_objects_persist_and_stop_leaves_nothing(
    server_tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # weed would turn these into a second identity; the server must not pass them on.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "FROMTHEENVIRONMENT")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "environment-secret")
    server = SeaweedServer(
        server_tmp_path / "seaweed", ports=SeaweedPorts.allocate(), bucket="kept"
    )
    await server.start()
    try:
        assert stat.S_IMODE(server.identities_path.stat().st_mode) == 0o600
        from_environment = server.client(
            access_key="FROMTHEENVIRONMENT", secret_key="environment-secret"
        )
        with pytest.raises(S3Error):
            from_environment.bucket_exists(bucket_name="kept")
        assert server.client().bucket_exists(bucket_name="kept")
        put(server, "restart.txt", b"survives a restart")
        assert server.process is not None
        assert server.process.pid is not None
        running = process_tree(server.process.pid)
    finally:
        await server.stop()
    assert survivors(running) == set()
    assert all(is_port_free(port) for port in server.ports.by_owner().values())
    assert sockets_left_in_tmp(server.ports) == []

    again = SeaweedServer(server_tmp_path / "seaweed", ports=server.ports, bucket="kept")
    await again.start()
    try:
        assert again.access_key == server.access_key
        assert get(again, "restart.txt") == b"survives a restart"
    finally:
        await again.stop()
