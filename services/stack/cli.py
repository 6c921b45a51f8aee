"""`ckrv-cloud up`: run the local stack in the foreground until Ctrl-C."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any, NoReturn

from pydantic import ValidationError

from ckrv.services.stack.errors import StackError
from ckrv.services.stack.launcher import Stack, StackSettings

_DEFAULTS: dict[str, Any] = {
    name: field.default for name, field in StackSettings.model_fields.items()
}


def up(
    *,
    state_dir: Path = _DEFAULTS["state_dir"],
    fresh: bool = False,
    nats_port: int = _DEFAULTS["nats_port"],
    nats_monitor_port: int = _DEFAULTS["nats_monitor_port"],
    postgres_port: int = _DEFAULTS["postgres_port"],
    s3_port: int = _DEFAULTS["s3_port"],
    s3_grpc_port: int | None = None,
    seaweed_master_port: int = _DEFAULTS["seaweed_master_port"],
    seaweed_master_grpc_port: int | None = None,
    seaweed_volume_port: int = _DEFAULTS["seaweed_volume_port"],
    seaweed_volume_grpc_port: int | None = None,
    seaweed_filer_port: int = _DEFAULTS["seaweed_filer_port"],
    seaweed_filer_grpc_port: int | None = None,
    seaweed_admin_port: int = _DEFAULTS["seaweed_admin_port"],
    services_port: int = _DEFAULTS["services_port"],
    bucket: str = _DEFAULTS["bucket"],
) -> None:
    """Start NATS, PostgreSQL, SeaweedFS and every service on loopback; Ctrl-C stops them all.

    Data is kept in the state folder between runs. While the stack runs,
    `<state-dir>/stack.json` holds its endpoints and credentials.

    Parameters
    ----------
    state_dir
        Folder with every server's data and logs.
    fresh
        Delete the state folder's contents first.
    nats_port
        NATS client port.
    nats_monitor_port
        NATS monitoring (HTTP) port.
    postgres_port
        PostgreSQL port.
    s3_port
        S3 endpoint port.
    s3_grpc_port
        SeaweedFS S3 gRPC port (default: S3 port + 10000).
    seaweed_master_port
        SeaweedFS master port.
    seaweed_master_grpc_port
        SeaweedFS master gRPC port (default: master port + 10000).
    seaweed_volume_port
        SeaweedFS volume server port.
    seaweed_volume_grpc_port
        SeaweedFS volume server gRPC port (default: volume port + 10000).
    seaweed_filer_port
        SeaweedFS filer port.
    seaweed_filer_grpc_port
        SeaweedFS filer gRPC port (default: filer port + 10000).
    seaweed_admin_port
        SeaweedFS admin port (its gRPC port is always this + 10000).
    services_port
        HTTP port of the first service (the gateway); each next service takes the next port.
    bucket
        S3 bucket for job results.
    """
    try:
        settings = StackSettings(
            state_dir=state_dir,
            fresh=fresh,
            nats_port=nats_port,
            nats_monitor_port=nats_monitor_port,
            postgres_port=postgres_port,
            s3_port=s3_port,
            s3_grpc_port=s3_grpc_port,
            seaweed_master_port=seaweed_master_port,
            seaweed_master_grpc_port=seaweed_master_grpc_port,
            seaweed_volume_port=seaweed_volume_port,
            seaweed_volume_grpc_port=seaweed_volume_grpc_port,
            seaweed_filer_port=seaweed_filer_port,
            seaweed_filer_grpc_port=seaweed_filer_grpc_port,
            seaweed_admin_port=seaweed_admin_port,
            services_port=services_port,
            bucket=bucket,
        )
        exit_code = asyncio.run(Stack(settings).run())
    except ValidationError as error:
        messages = "; ".join(
            f"{'.'.join(map(str, detail['loc']))}: {detail['msg']}" for detail in error.errors()
        )
        _fail(f"invalid settings: {messages}", code=2)
    except StackError as error:
        _fail(str(error), code=1)
    sys.exit(exit_code)


def _fail(message: str, *, code: int) -> NoReturn:
    print(f"ckrv-cloud up: {message}", file=sys.stderr)
    sys.exit(code)
