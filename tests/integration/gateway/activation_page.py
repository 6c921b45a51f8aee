"""A person at the activation page, as a browser without JavaScript would be: cookies and forms."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit
from uuid import uuid4

import httpx

from tests.running_gateway import RunningGateway

CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')
PASSWORD = "correct horse battery staple"
CLIENT_ID = "ckrv-cli"
DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


def new_email() -> str:
    return f"person-{uuid4().hex[:12]}@example.com"


def impossible_user_code() -> str:
    """A well-formed code the gateway never issues (vowels and 0/1 are not in its alphabet)."""
    letters = "".join(secrets.choice("AEIOU") for _ in range(4))
    digits = "".join(secrets.choice("01") for _ in range(4))
    return f"{letters}-{digits}"


def csrf_token(page: httpx.Response) -> str:
    found = CSRF_FIELD.search(page.text)
    assert found is not None, page.text
    return found.group(1)


@dataclass
class Person:
    """One browser: its own cookies, optionally its own source address on the loopback."""

    http: httpx.AsyncClient
    email: str = ""
    csrf: str = ""

    @classmethod
    def at(cls, gateway: RunningGateway, address: str | None = None) -> Person:
        transport = httpx.AsyncHTTPTransport(local_address=address) if address else None
        http = httpx.AsyncClient(
            base_url=gateway.url, timeout=30, follow_redirects=False, transport=transport
        )
        return cls(http=http, email=new_email())

    async def close(self) -> None:
        await self.http.aclose()

    async def get(self, path: str, **params: str) -> httpx.Response:
        page = await self.http.get(path, params=params)
        if 'name="csrf_token"' in page.text:
            self.csrf = csrf_token(page)
        return page

    async def post(self, path: str, form: dict[str, str]) -> httpx.Response:
        page = await self.http.post(path, data=form)
        if 'name="csrf_token"' in page.text:
            self.csrf = csrf_token(page)
        return page

    async def follow(self, redirect: httpx.Response) -> httpx.Response:
        assert redirect.status_code == 303, redirect.text
        location = urlsplit(redirect.headers["location"])
        assert not location.netloc, "redirects stay on the gateway"
        return await self.get(location.path, **dict(parse_qsl(location.query)))

    async def sign_up(self, user_code: str = "", password: str = PASSWORD) -> httpx.Response:
        await self.get("/activate/sign-up", user_code=user_code)
        redirect = await self.post(
            "/activate/sign-up",
            {
                "csrf_token": self.csrf,
                "email": self.email,
                "password": password,
                "name": "Test Person",
                "user_code": user_code,
            },
        )
        return await self.follow(redirect)

    async def sign_in(self, password: str = PASSWORD, user_code: str = "") -> httpx.Response:
        await self.get("/activate")
        return await self.post(
            "/activate/sign-in",
            {
                "csrf_token": self.csrf,
                "email": self.email,
                "password": password,
                "user_code": user_code,
            },
        )

    async def decide(self, user_code: str, decision: str) -> httpx.Response:
        return await self.post(
            "/activate",
            {"csrf_token": self.csrf, "user_code": user_code, "decision": decision},
        )


async def start_device_flow(api: httpx.AsyncClient) -> dict[str, Any]:
    started = await api.post("/auth/device", json={"client_id": CLIENT_ID})
    assert started.status_code == 200, started.text
    body: dict[str, Any] = started.json()
    return body


async def poll_once(api: httpx.AsyncClient, device_code: str) -> httpx.Response:
    return await api.post(
        "/auth/token",
        json={"grant_type": DEVICE_CODE_GRANT, "device_code": device_code, "client_id": CLIENT_ID},
    )
