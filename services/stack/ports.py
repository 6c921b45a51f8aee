"""Loopback port allocation, and the up-front check that every configured port is free."""

from __future__ import annotations

import secrets
import socket
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from pathlib import Path

from ckrv.services.stack.errors import StackError

MAX_PORT = 65535
_ATTEMPTS = 200
LOWEST_ALLOCATED_PORT = 10000
EPHEMERAL_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"


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


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path(EPHEMERAL_RANGE_FILE).read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def _allocation_range(offset: int) -> range:
    """Ports to pick from: below the ephemeral range, so no outgoing connection holds one.

    A port the kernel handed out by `bind(0)` sits in the range it also uses for the
    local end of outgoing connections; between our check and the server's bind, any
    client in the machine may be given it. Ports below that range are only ever taken
    by someone binding them on purpose.
    """
    ephemeral_low, _ = _ephemeral_range()
    highest = min(ephemeral_low, MAX_PORT + 1) - 1 - offset
    if highest - LOWEST_ALLOCATED_PORT < _ATTEMPTS:
        return range(1024, MAX_PORT + 1 - offset)
    return range(LOWEST_ALLOCATED_PORT, highest + 1)


def _take_port(held: ExitStack, host: str, offset: int, taken: set[int]) -> int:
    candidates = _allocation_range(offset)
    for _ in range(_ATTEMPTS):
        port = secrets.choice(candidates)
        if port in taken or port + offset in taken:
            continue
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            _bind(sock, host, port)
        except OSError:
            sock.close()
            continue
        held.enter_context(sock)
        if offset and not is_port_free(port + offset, host):
            continue
        taken.update({port, port + offset})
        return port
    raise PortInUseError(f"found no free port on {host} after {_ATTEMPTS} tries")


def free_ports_apart(offsets: Sequence[int], host: str = "127.0.0.1") -> list[int]:
    """One free port per entry of `offsets`, each with `port + offset` free as well.

    An offset of 0 asks for a plain port; SeaweedFS derives gRPC ports as port + 10000.
    All are distinct, and free now (another process may still take them later).
    """
    taken: set[int] = set()
    # Every socket stays bound until all are chosen, so no port is handed out twice.
    with ExitStack() as held:
        return [_take_port(held, host, offset, taken) for offset in offsets]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports that are free now."""
    return free_ports_apart([0] * count, host)
