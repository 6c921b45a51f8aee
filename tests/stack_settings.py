"""Local stack settings on free ports, and the same settings as command-line flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ckrv.services.stack.launcher import StackSettings, registered_services
from ckrv.services.stack.ports import free_ports, is_port_free
from ckrv.services.stack.seaweed_server import SeaweedPorts


def _free_run(length: int) -> int:
    """The first of `length` consecutive free ports (each service takes the next one)."""
    while True:
        (first,) = free_ports(1)
        if all(is_port_free(first + offset) for offset in range(1, length)):
            return first


def free_port_settings(state_dir: Path, **overrides: Any) -> StackSettings:
    services = overrides.get("services", registered_services())
    while True:
        seaweed = SeaweedPorts.allocate()
        nats, nats_monitor, postgres = free_ports(3)
        services_port = _free_run(len(services))
        plain = {nats, nats_monitor, postgres, *range(services_port, services_port + len(services))}
        # Separate allocations may pick the same port twice; SeaweedFS's are not yet bound.
        if not plain & set(seaweed.by_owner().values()):
            break
    values: dict[str, Any] = {
        "state_dir": state_dir,
        "nats_port": nats,
        "nats_monitor_port": nats_monitor,
        "postgres_port": postgres,
        "s3_port": seaweed.s3,
        "s3_grpc_port": seaweed.s3_grpc,
        "seaweed_master_port": seaweed.master,
        "seaweed_master_grpc_port": seaweed.master_grpc,
        "seaweed_volume_port": seaweed.volume,
        "seaweed_volume_grpc_port": seaweed.volume_grpc,
        "seaweed_filer_port": seaweed.filer,
        "seaweed_filer_grpc_port": seaweed.filer_grpc,
        "seaweed_admin_port": seaweed.admin,
        "services_port": services_port,
    }
    return StackSettings(**(values | overrides))


CLI_OPTIONS = (
    "state_dir",
    "nats_port",
    "nats_monitor_port",
    "postgres_port",
    "s3_port",
    "s3_grpc_port",
    "seaweed_master_port",
    "seaweed_master_grpc_port",
    "seaweed_volume_port",
    "seaweed_volume_grpc_port",
    "seaweed_filer_port",
    "seaweed_filer_grpc_port",
    "seaweed_admin_port",
    "services_port",
)


def cli_arguments(settings: StackSettings) -> list[str]:
    arguments = []
    for name in CLI_OPTIONS:
        value = getattr(settings, name)
        if value is not None:
            arguments += [f"--{name.replace('_', '-')}", str(value)]
    return arguments
