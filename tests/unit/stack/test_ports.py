"""Port allocation and the up-front port check."""

from __future__ import annotations

import socket

import pytest

from ckrv.services.stack.ports import (
    PortInUseError,
    ensure_ports_free,
    free_port_with_partner,
    free_ports,
    is_port_free,
)


def test_free_ports_are_distinct_and_free() -> None:
    ports = free_ports(5)
    assert len(set(ports)) == 5
    assert all(is_port_free(port) for port in ports)


def test_a_partnered_port_has_its_partner_free() -> None:
    port = free_port_with_partner(10000)
    assert is_port_free(port)
    assert is_port_free(port + 10000)


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
