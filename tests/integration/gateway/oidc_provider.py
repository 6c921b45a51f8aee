"""A minimal OpenID Connect provider for tests: the upstream identity service the gateway
would use in production, which cannot be reached from here.

Authorization code flow only: `/authorize` signs in whoever `next_identity` names at
once (no login page) and redirects back with a code; `/token` checks the client's
secret, the redirect URI and the PKCE verifier, and answers an RS256 ID token with
the nonce it was given. Discovery and JWKS are served as a real provider would.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse
from joserfc import jwt
from joserfc.jwk import RSAKey

from ckrv.services.stack.ports import free_ports

CLIENT_ID = "ckrv-gateway"
CLIENT_SECRET = "provider-secret-for-tests"


@dataclass
class Identity:
    subject: str
    email: str
    email_verified: bool = True
    name: str = "Provider Person"


@dataclass
class Grant:
    identity: Identity
    redirect_uri: str
    nonce: str | None
    code_challenge: str | None


@dataclass
class OidcProvider:
    port: int
    key: RSAKey = field(default_factory=lambda: RSAKey.generate_key(2048, parameters={"kid": "t1"}))
    next_identity: Identity | None = None
    grants: dict[str, Grant] = field(default_factory=dict)
    token_requests: int = 0

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/.well-known/openid-configuration")
        async def discovery() -> dict[str, Any]:
            return {
                "issuer": self.issuer,
                "authorization_endpoint": f"{self.issuer}/authorize",
                "token_endpoint": f"{self.issuer}/token",
                "jwks_uri": f"{self.issuer}/jwks",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "code_challenge_methods_supported": ["S256"],
            }

        @app.get("/jwks")
        async def jwks() -> dict[str, Any]:
            return {"keys": [self.key.as_dict(private=False)]}

        @app.get("/authorize")
        async def authorize(request: Request) -> RedirectResponse:
            query = request.query_params
            assert query["client_id"] == CLIENT_ID
            assert query["response_type"] == "code"
            assert "openid" in query["scope"].split()
            assert self.next_identity is not None, "the test names who signs in"
            code = secrets.token_urlsafe(16)
            self.grants[code] = Grant(
                identity=self.next_identity,
                redirect_uri=query["redirect_uri"],
                nonce=query.get("nonce"),
                code_challenge=query.get("code_challenge"),
            )
            back = urlencode({"code": code, "state": query["state"]})
            return RedirectResponse(f"{query['redirect_uri']}?{back}", status_code=302)

        @app.post("/token")
        async def token(request: Request) -> JSONResponse:
            self.token_requests += 1
            form = await request.form()
            expected = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
            if request.headers.get("authorization") != f"Basic {expected}":
                return JSONResponse({"error": "invalid_client"}, status_code=401)
            grant = self.grants.pop(str(form.get("code")), None)
            if grant is None or form.get("redirect_uri") != grant.redirect_uri:
                return JSONResponse({"error": "invalid_grant"}, status_code=400)
            verifier = str(form.get("code_verifier", ""))
            challenge = (
                base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
                .decode()
                .rstrip("=")
            )
            if grant.code_challenge is None or challenge != grant.code_challenge:
                return JSONResponse({"error": "invalid_grant"}, status_code=400)
            now = int(time.time())
            claims: dict[str, Any] = {
                "iss": self.issuer,
                "sub": grant.identity.subject,
                "aud": CLIENT_ID,
                "iat": now,
                "exp": now + 300,
                "email": grant.identity.email,
                "email_verified": grant.identity.email_verified,
                "name": grant.identity.name,
            }
            if grant.nonce is not None:
                claims["nonce"] = grant.nonce
            id_token = jwt.encode({"alg": "RS256", "kid": "t1"}, claims, self.key)
            return JSONResponse(
                {
                    "access_token": secrets.token_urlsafe(16),
                    "token_type": "Bearer",
                    "expires_in": 300,
                    "id_token": id_token,
                }
            )

        return app


class RunningProvider:
    """The provider served by uvicorn on a thread of its own."""

    def __init__(self) -> None:
        (port,) = free_ports(1)
        self.provider = OidcProvider(port=port)
        config = uvicorn.Config(
            self.provider.app(), host="127.0.0.1", port=port, log_level="warning"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> OidcProvider:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the test OpenID provider did not start")
            time.sleep(0.05)
        return self.provider

    def __exit__(self, *_: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
