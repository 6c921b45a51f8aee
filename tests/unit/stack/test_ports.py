"""Port allocation and the up-front port check."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from ckrv.services.stack.ports import (
    PortInUseError,
    ensure_ports_free,
    free_ports,
    free_ports_apart,
    is_port_free,
)


def test_free_ports_are_distinct_and_free() -> None:
    ports = free_ports(5)
    assert len(set(ports)) == 5
    assert all(is_port_free(port) for port in ports)


def test_partnered_ports_have_their_partners_free_and_unshared() -> None:
    plain, partnered, other = free_ports_apart([0, 10000, 10000])
    in_use = [plain, partnered, partnered + 10000, other, other + 10000]
    assert len(set(in_use)) == len(in_use)
    assert all(is_port_free(port) for port in in_use)


def test_ports_come_from_below_the_ephemeral_range() -> None:
    # Outgoing connections take their local port from the ephemeral range; a port
    # chosen there could be taken by any client before the server binds it.
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert all(port < ephemeral_low for port in free_ports(20))
    assert all(port + 10000 < ephemeral_low for port in free_ports_apart([10000] * 5))


def test_a_listening_port_is_named_with_its_owner() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        (free,) = free_ports(1)
        with pytest.raises(PortInUseError) as error:
            ensure_ports_free([("nats", free), ("postgres", taken)])
    assert str(error.value) == f"port {taken} (postgres) on 127.0.0.1 is already in use"


def test_a_port_wanted_twice_is_refused_before_binding() -> None:
    with pytest.raises(PortInUseError, match="port 4222 is configured for both nats and s3"):
        ensure_ports_free([("nats", 4222), ("s3", 4222)])


def test_an_impossible_port_is_refused() -> None:
    with pytest.raises(PortInUseError, match=r"port 70000 \(s3\) is not a valid TCP port"):
        ensure_ports_free([("s3", 70000)])
