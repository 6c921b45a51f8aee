"""Stack settings: loopback only, SeaweedFS gRPC ports, and the list of ports checked up front."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from ckrv.services.operator import SERVICES
from ckrv.services.stack.launcher import Stack, StackSettings


def test_defaults_are_the_well_known_ports_and_every_registered_service() -> None:
    settings = StackSettings()
    assert (settings.nats_port, settings.postgres_port, settings.s3_port) == (4222, 5432, 8333)
    assert settings.services == tuple(SERVICES)
    assert settings.service_ports()["gateway"] == 8080


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::1", "localhost.example"])
def test_only_loopback_addresses_are_accepted(host: str) -> None:
    with pytest.raises(ValidationError, match="loopback"):
        StackSettings(host=host)


def test_seaweed_grpc_ports_follow_http_ports_unless_given() -> None:
    ports = StackSettings(s3_port=9000, seaweed_filer_grpc_port=20001).seaweed_ports()
    assert ports.s3_grpc == 19000
    assert ports.filer_grpc == 20001
    assert ports.master_grpc == 19333
    assert ports.admin_grpc == ports.admin + 10000


def test_every_listening_port_is_checked_under_its_own_name() -> None:
    settings = StackSettings(services=("gateway", "dispatcher"), services_port=9100)
    wanted = dict(Stack(settings).wanted_ports())
    assert wanted["nats"] == 4222
    assert wanted["nats monitor"] == 8222
    assert wanted["postgres"] == 5432
    assert wanted["seaweedfs admin grpc"] == 33646
    assert (wanted["gateway"], wanted["dispatcher"]) == (9100, 9101)
    assert len(wanted) == 15


def test_the_state_folder_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert Stack(StackSettings()).state_dir == tmp_path / ".ckrv-state"
