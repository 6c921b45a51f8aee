"""Loopback port allocation, and the up-front check that every configured port is free."""

from __future__ import annotations

import socket
from collections.abc import Iterable
from contextlib import ExitStack

from ckrv.services.stack.errors import StackError

MAX_PORT = 65535
_ATTEMPTS = 50


class PortInUseError(StackError):
    """A port the stack wants is taken, or configured twice."""


def _bind(sock: socket.socket, host: str, port: int) -> None:
    # SO_REUSEADDR mirrors how the servers bind: a port held only by TIME_WAIT connections
    # of a previous run counts as free, while any listener on it still counts as taken.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))


def is_port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on `host:port` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            _bind(sock, host, port)
        except OSError:
            return False
    return True


def ensure_ports_free(wanted: Iterable[tuple[str, int]], host: str = "127.0.0.1") -> None:
    """Raise `PortInUseError` naming the first port that is taken or wanted by two owners.

    `wanted` pairs an owner's name (e.g. `nats`) with the port it will listen on.
    """
    owners: dict[int, str] = {}
    for owner, port in wanted:
        if not 0 < port <= MAX_PORT:
            raise PortInUseError(f"port {port} ({owner}) is not a valid TCP port")
        if port in owners:
            raise PortInUseError(f"port {port} is configured for both {owners[port]} and {owner}")
        owners[port] = owner
    for port, owner in owners.items():
        if not is_port_free(port, host):
            raise PortInUseError(f"port {port} ({owner}) on {host} is already in use")


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports that are free now (another process may still take them later)."""
    with ExitStack() as held:
        ports = []
        # Every socket stays bound until all are chosen, so the kernel cannot hand out one twice.
        for _ in range(count):
            sock = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            _bind(sock, host, 0)
            ports.append(int(sock.getsockname()[1]))
    return ports


def free_port_with_partner(offset: int, host: str = "127.0.0.1") -> int:
    """A free port whose `port + offset` is free as well (SeaweedFS derives gRPC ports so)."""
    for _ in range(_ATTEMPTS):
        (port,) = free_ports(1, host)
        if port + offset <= MAX_PORT and is_port_free(port + offset, host):
            return port
    raise PortInUseError(f"found no free port pair {offset} apart on {host}")
