"""Which webhook URLs are allowed: https on public addresses in the cloud, anything locally."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

import pytest

from ckrv.services.notifier.addresses import (
    WebhookUrlError,
    check_webhook_url,
    is_public_address,
    parse_webhook_url,
    resolve_allowed,
)

GetAddrInfo = Callable[..., list[tuple[object, ...]]]


def answering(*addresses: str) -> GetAddrInfo:
    """A `getaddrinfo` that answers every name with `addresses`."""

    def getaddrinfo(host: str, port: int, *_: object, **__: object) -> list[tuple[object, ...]]:
        return [
            (
                socket.AF_INET6 if ":" in address else socket.AF_INET,
                socket.SOCK_STREAM,
                6,
                "",
                (address, port),
            )
            for address in addresses
        ]

    return getaddrinfo


def not_resolving(host: str, *_: object, **__: object) -> list[tuple[object, ...]]:
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("93.184.215.14", True),
        ("2606:4700:4700::1111", True),
        ("::ffff:8.8.8.8", True),
        ("64:ff9b::808:808", True),
        ("127.0.0.1", False),
        ("127.8.9.10", False),
        ("0.0.0.0", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("192.0.2.1", False),
        ("198.18.0.1", False),
        ("224.0.0.1", False),
        ("255.255.255.255", False),
        ("::1", False),
        ("::", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("fd12:3456::1", False),
        ("ff02::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("2002:7f00:1::", False),
        ("2001:0:4136:e378:8000:63bf:f5ff:fffe", False),
        ("64:ff9b::a00:1", False),
    ],
)
def test_public_addresses(address: str, public: bool) -> None:
    assert is_public_address(ipaddress.ip_address(address)) is public


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://hooks.example.com/ckrv", "must be an https URL"),
        ("ftp://hooks.example.com/ckrv", "must be an https URL"),
        ("hooks.example.com/ckrv", "must be an https URL"),
        ("https:///ckrv", "has no host"),
        ("https://hooks.example.com:99999/ckrv", "not a valid URL"),
        ("https://user:pass@hooks.example.com/ckrv", "user name or password"),
        ("https://hooks.example.com/ckrv#part", "fragment"),
        ("https://127.0.0.1/ckrv", "127.0.0.1 is not a public address"),
        ("https://[::1]:8443/ckrv", "::1 is not a public address"),
        ("https://169.254.169.254/latest/meta-data", "not a public address"),
        ("https://[::ffff:192.168.0.1]/ckrv", "not a public address"),
    ],
)
def test_cloud_refuses(url: str, reason: str) -> None:
    with pytest.raises(WebhookUrlError, match=reason):
        parse_webhook_url(url, cloud=True)


def test_cloud_takes_https_on_a_public_address_or_a_name() -> None:
    target = parse_webhook_url("https://8.8.8.8/ckrv", cloud=True)
    assert (target.scheme, target.host, target.port) == ("https", "8.8.8.8", 443)
    named = parse_webhook_url("https://hooks.example.com:8443/a?b=c", cloud=True)
    assert (named.host, named.port, named.address) == ("hooks.example.com", 8443, None)


def test_a_development_stack_takes_http_and_loopback() -> None:
    target = parse_webhook_url("http://127.0.0.1:9000/hook", cloud=False)
    assert (target.scheme, target.port) == ("http", 9000)
    assert parse_webhook_url("http://localhost/hook", cloud=False).port == 80
    with pytest.raises(WebhookUrlError, match="must be an http or https URL"):
        parse_webhook_url("ftp://127.0.0.1/hook", cloud=False)


async def test_a_name_is_judged_by_every_address_it_resolves_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", answering("8.8.8.8", "2606:4700:4700::1111"))
    found = await resolve_allowed("hooks.example.com", 443, cloud=True)
    assert [str(address) for address in found] == ["8.8.8.8", "2606:4700:4700::1111"]

    monkeypatch.setattr(socket, "getaddrinfo", answering("8.8.8.8", "10.0.0.7"))
    with pytest.raises(WebhookUrlError, match=r"resolves to 10\.0\.0\.7, which is not a public"):
        await resolve_allowed("hooks.example.com", 443, cloud=True)
    # Locally the same answer is fine.
    assert len(await resolve_allowed("hooks.example.com", 443, cloud=False)) == 2


async def test_a_name_that_does_not_resolve_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", not_resolving)
    with pytest.raises(WebhookUrlError, match=r"nowhere\.example does not resolve"):
        await check_webhook_url("https://nowhere.example/hook", cloud=True)


async def test_saving_checks_the_resolved_name_only_in_the_cloud(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", answering("127.0.0.1"))
    with pytest.raises(WebhookUrlError, match=r"resolves to 127\.0\.0\.1"):
        await check_webhook_url("https://inside.example/hook", cloud=True)
    await check_webhook_url("https://inside.example/hook", cloud=False)
