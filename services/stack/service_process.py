"""One Chakravarti Cloud service (`ckrv-cloud serve <name>`) as a child of the local stack."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from ckrv.services.stack.nats_server import NatsServer
from ckrv.services.stack.postgres_server import PostgresServer
from ckrv.services.stack.process import Supervised, answers_ok, find_executable
from ckrv.services.stack.seaweed_server import SeaweedServer

# The local stack is a development stack: jobs may name repositories on this machine.
DEVELOPMENT_SWITCHES = {
    "CKRV_GATEWAY_ALLOW_LOCAL_REPOSITORIES": "true",
}


def connection_environment(
    nats: NatsServer, postgres: PostgresServer, s3: SeaweedServer, *, credential_keys: str
) -> dict[str, str]:
    """The `CKRV_*` variables that point a service at the stack's servers and its keys."""
    return {
        "CKRV_ENV": "dev",
        "CKRV_CREDENTIAL_KEYS": credential_keys,
        "CKRV_NATS_URL": nats.url,
        "CKRV_DATABASE_URL": postgres.dsn,
        "CKRV_S3_ENDPOINT": s3.endpoint,
        "CKRV_S3_ACCESS_KEY": s3.access_key,
        "CKRV_S3_SECRET_KEY": s3.secret_key,
        "CKRV_S3_REGION": s3.region,
        "CKRV_S3_BUCKET": s3.bucket,
        **DEVELOPMENT_SWITCHES,
    }


class ServiceProcess(Supervised):
    """A service with its HTTP endpoints (/healthz, /readyz, /metrics) on its own port."""

    def __init__(
        self,
        name: str,
        *,
        port: int,
        log_dir: Path,
        connections: Mapping[str, str],
        shutdown_timeout_seconds: float,
        host: str = "127.0.0.1",
    ) -> None:
        super().__init__(name, log_dir / f"{name}.log")
        self.port = port
        self.host = host
        self.connections = dict(connections)
        self.shutdown_timeout_seconds = shutdown_timeout_seconds

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        return [str(find_executable("ckrv-cloud")), "serve", self.name]

    def environment(self) -> dict[str, str]:
        prefix = f"CKRV_{self.name.upper().replace('-', '_')}_"
        return {
            **os.environ,
            **self.connections,
            f"{prefix}HTTP_HOST": self.host,
            f"{prefix}HTTP_PORT": str(self.port),
            # Less than the stack gives the service to stop, so it finishes before a SIGKILL.
            f"{prefix}SHUTDOWN_TIMEOUT_SECONDS": f"{self.shutdown_timeout_seconds:g}",
        }

    async def is_ready(self) -> bool:
        return await answers_ok(f"{self.url}/readyz")
