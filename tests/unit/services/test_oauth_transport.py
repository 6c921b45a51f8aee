"""OAuth requests need HTTPS at the gateway's public address, as authlib's rule says, except
on loopback and in development."""

from __future__ import annotations

import pytest
from authlib.oauth2.rfc6749 import InsecureTransportError
from starlette.requests import Request

from ckrv.services.gateway.identity.authorization_server import GatewayOAuth2Request
from ckrv.services.gateway.identity.config import load_identity
from ckrv.services.gateway.settings import GatewaySettings

SWITCH = "AUTHLIB_INSECURE_TRANSPORT"
# What the gateway sees behind a TLS-terminating ingress: plain HTTP to its pod address.
TOKEN_REQUEST = Request(
    {
        "type": "http",
        "method": "POST",
        "scheme": "http",
        "server": ("10.0.0.7", 8080),
        "path": "/v1/auth/token",
        "query_string": b"",
        "headers": [],
    }
)


@pytest.fixture(autouse=True)
def authlib_checks_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    # Set, then removed: whatever a test sets is undone after it.
    monkeypatch.setenv(SWITCH, "")
    monkeypatch.delenv(SWITCH)


def test_the_public_address_decides_not_the_one_the_gateway_sees() -> None:
    for public_url in ("https://ckrv.example", "http://127.0.0.1:8080", "http://localhost:8080"):
        request = GatewayOAuth2Request(TOKEN_REQUEST, public_url, {"grant_type": "x"})
        assert request.uri == f"{public_url}/v1/auth/token"
        assert request.payload.grant_type == "x"
    with pytest.raises(InsecureTransportError):
        GatewayOAuth2Request(TOKEN_REQUEST, "http://ckrv.example", {})


def test_development_accepts_plain_http() -> None:
    load_identity(GatewaySettings(env="dev", public_url="http://127.0.0.1:8080"))
    with pytest.raises(InsecureTransportError):
        GatewayOAuth2Request(TOKEN_REQUEST, "http://ckrv.localhost", {})

    # A development cluster's address.
    load_identity(GatewaySettings(env="dev", public_url="http://ckrv.localhost"))
    request = GatewayOAuth2Request(TOKEN_REQUEST, "http://ckrv.localhost", {})
    assert request.uri == "http://ckrv.localhost/v1/auth/token"
