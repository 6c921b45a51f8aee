"""The handle tests get on the session's gateway process."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ckrv.services.gateway.identity.keys import generate_signing_key
from ckrv.services.stack.ports import free_ports
from ckrv.services.stack.service_process import DEVELOPMENT_SWITCHES, ServiceProcess


@dataclass(frozen=True)
class RunningGateway:
    """A `ckrv-cloud serve gateway` process on the session's servers, with development sign-in."""

    url: str
    # The private key set it signs access tokens with, so tests can forge bad ones.
    signing_jwks: str
    log_path: Path

    @property
    def signing_keys(self) -> list[dict[str, Any]]:
        keys: list[dict[str, Any]] = json.loads(self.signing_jwks)["keys"]
        return keys

    @property
    def api_url(self) -> str:
        return f"{self.url}/v1"

    @staticmethod
    def token(email: str, tier: str = "free") -> str:
        return f"dev:{email}:{tier}"


def gateway_process(
    *, nats_url: str, database_url: str, log_dir: Path, switches: dict[str, str] | None = None
) -> tuple[ServiceProcess, RunningGateway]:
    """A gateway on free ports with a fresh signing key; not started yet."""
    (port,) = free_ports(1)
    signing_jwks = json.dumps({"keys": [generate_signing_key()]})
    process = ServiceProcess(
        "gateway",
        port=port,
        log_dir=log_dir,
        connections={
            "CKRV_ENV": "dev",
            "CKRV_NATS_URL": nats_url,
            "CKRV_DATABASE_URL": database_url,
            "CKRV_GATEWAY_SIGNING_KEYS": signing_jwks,
            **DEVELOPMENT_SWITCHES,
            **(switches or {}),
        },
        shutdown_timeout_seconds=5,
    )
    return process, RunningGateway(process.url, signing_jwks, process.log_path)
