"""Which webhook URLs may be called: https on public addresses in the cloud, anything locally.

A URL is checked when an endpoint is saved, and its host's addresses again at
each connection (`PublicAddressResolver`): the connection goes to the very
addresses that passed, so a name that resolves to a public address at the first
lookup and to an internal one at the next (DNS rebinding) cannot get through.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# NAT64's well-known prefix: its last 32 bits are an IPv4 address the translator reaches.
NAT64_PREFIX = ipaddress.IPv6Network("64:ff9b::/96")
DEFAULT_PORTS = {"http": 80, "https": 443}


class WebhookUrlError(ValueError):
    """The URL may not receive webhooks here; the message says why."""


@dataclass(frozen=True)
class WebhookTarget:
    scheme: str
    host: str
    port: int
    address: IPAddress | None
    """The host when the URL names an address rather than a name."""


def is_public_address(address: IPAddress) -> bool:
    """Reachable on the internet: not loopback, private, link-local, shared, reserved, multicast.

    An IPv6 address that carries an IPv4 one (mapped, 6to4, Teredo, NAT64) is judged by it.
    """
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address.teredo is not None:
            embedded = address.teredo[1]
        if embedded is None and address in NAT64_PREFIX:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public_address(embedded)
    return address.is_global and not address.is_multicast


def _literal_address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def parse_webhook_url(url: str, *, cloud: bool) -> WebhookTarget:
    """The URL's scheme, host and port, if its form is allowed; `WebhookUrlError` if not.

    In the cloud only https, and an address in the URL must be public; a name is
    checked once resolved (`resolve_allowed`).
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as error:
        raise WebhookUrlError(f"is not a valid URL: {error}") from None
    allowed_schemes = ("https",) if cloud else ("https", "http")
    if parts.scheme not in allowed_schemes:
        raise WebhookUrlError("must be an https URL" if cloud else "must be an http or https URL")
    if not parts.hostname:
        raise WebhookUrlError("has no host")
    if parts.username is not None or parts.password is not None:
        raise WebhookUrlError(
            "must not hold a user name or password: receivers check the signature instead"
        )
    if parts.fragment:
        raise WebhookUrlError("must not have a #fragment")
    address = _literal_address(parts.hostname)
    if cloud and address is not None and not is_public_address(address):
        raise WebhookUrlError(f"{address} is not a public address")
    return WebhookTarget(parts.scheme, parts.hostname, port or DEFAULT_PORTS[parts.scheme], address)


async def resolve_allowed(host: str, port: int, *, cloud: bool) -> list[IPAddress]:
    """The host's addresses, each of which may be called; `WebhookUrlError` otherwise.

    In the cloud a host with any non-public address is refused as a whole: a name
    that is partly internal is not a receiver on the internet.
    """
    literal = _literal_address(host)
    if literal is not None:
        found = [literal]
    else:
        try:
            # `socket.getaddrinfo` looked up at each call: the one place names are resolved.
            answers = await asyncio.to_thread(
                socket.getaddrinfo, host, port, type=socket.SOCK_STREAM
            )
        except (socket.gaierror, UnicodeError) as error:
            raise WebhookUrlError(f"{host} does not resolve: {error}") from None
        found = []
        for *_, sockaddr in answers:
            # An IPv6 link-local answer carries its zone (`fe80::1%eth0`).
            address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            if address not in found:
                found.append(address)
        if not found:
            raise WebhookUrlError(f"{host} has no address")
    if cloud:
        for address in found:
            if not is_public_address(address):
                raise WebhookUrlError(
                    f"{host} resolves to {address}, which is not a public address"
                )
    return found


async def check_webhook_url(url: str, *, cloud: bool) -> None:
    """Refuse a URL an endpoint may not have (`WebhookUrlError`), before it is saved."""
    target = parse_webhook_url(url, cloud=cloud)
    if cloud:
        await resolve_allowed(target.host, target.port, cloud=cloud)


class PublicAddressResolver(AbstractResolver):
    """aiohttp's name resolution for webhook connections: only addresses that may be called."""

    def __init__(self, *, cloud: bool) -> None:
        self._cloud = cloud

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addresses = await resolve_allowed(host, port, cloud=self._cloud)
        return [
            ResolveResult(
                hostname=host,
                host=str(address),
                port=port,
                family=socket.AF_INET6 if address.version == 6 else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in addresses
        ]

    async def close(self) -> None:
        """Nothing to release: each lookup stands alone."""
