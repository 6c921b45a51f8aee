"""Sign-in through an upstream OpenID Connect provider (authlib's Starlette client).

Authorization code flow with PKCE and a nonce; the ID token is verified by authlib
against the provider's published keys, its issuer and our client id. The state
between redirect and callback lives in Starlette's signed session cookie, which
app.py installs only when a provider is configured.
"""

from __future__ import annotations

from typing import Any

from authlib.integrations.starlette_client import OAuth
from fastapi import FastAPI

from ckrv.services.gateway.settings import GatewaySettings

PROVIDER_NAME = "upstream"
CALLBACK_PATH = "/activate/oidc/callback"
# Where the user code waits in the session while the user is at the provider.
PENDING_CODE_KEY = "activation_user_code"
SESSION_COOKIE = "ckrv_oidc"


def discovery_url(issuer: str) -> str:
    return f"{issuer.rstrip('/')}/.well-known/openid-configuration"


def create_upstream_client(settings: GatewaySettings) -> Any:
    """The registered authlib client (a `StarletteOAuth2App`) for the configured provider."""
    assert settings.oidc_issuer is not None
    assert settings.oidc_client_secret is not None
    oauth = OAuth()
    oauth.register(
        name=PROVIDER_NAME,
        client_id=settings.oidc_client_id,
        client_secret=settings.oidc_client_secret.get_secret_value(),
        server_metadata_url=discovery_url(settings.oidc_issuer),
        client_kwargs={"scope": "openid email profile", "code_challenge_method": "S256"},
    )
    return oauth.create_client(PROVIDER_NAME)


def upstream_client(app: FastAPI, settings: GatewaySettings) -> Any:
    """One client per application, made on first use (it caches the provider's metadata)."""
    client = getattr(app.state, "upstream_client", None)
    if client is None:
        client = create_upstream_client(settings)
        app.state.upstream_client = client
    return client


def install_upstream_sessions(app: FastAPI, settings: GatewaySettings) -> None:
    """Starlette's session middleware, which the authlib client keeps its state in."""
    from starlette.middleware.sessions import SessionMiddleware

    app.add_middleware(
        SessionMiddleware,
        secret_key=settings.session_secret.get_secret_value(),
        session_cookie=SESSION_COOKIE,
        max_age=15 * 60,
        path="/activate",
        same_site="lax",
        https_only=settings.base_url.startswith("https://"),
    )
