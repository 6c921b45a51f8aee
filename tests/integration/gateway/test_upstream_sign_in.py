"""Sign-in through an upstream OpenID Connect provider: users are created with the free tier on
first sign-in, found again by (issuer, subject), and linked to an existing user with the same
verified email.

No real provider can be reached from here: the first tests call the step after authlib has
verified the ID token; the others run the whole redirect flow (PKCE, state, nonce, signed ID
token) against a gateway configured with the small provider of oidc_provider.py.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from uuid import uuid4

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col

from ckrv.schemas.api import SubscriptionTier
from ckrv.services.common.db import session_factory
from ckrv.services.gateway.identity.accounts import UpstreamClaims, user_for_upstream_identity
from ckrv.services.gateway.identity.administration import create_user
from ckrv.services.gateway.identity.tables import LocalAccount, UpstreamIdentity
from ckrv.services.gateway.tables import User
from ckrv.services.stack.nats_server import NatsServer
from ckrv.services.stack.postgres_server import PostgresServer
from tests.integration.gateway.activation_page import (
    csrf_token,
    poll_once,
    start_device_flow,
)
from tests.integration.gateway.oidc_provider import (
    CLIENT_ID,
    CLIENT_SECRET,
    Identity,
    OidcProvider,
    RunningProvider,
)
from tests.running_gateway import RunningGateway, gateway_process

# The gateway fixture creates the schema.
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("gateway")]

ISSUER = "https://login.example.com"


def _claims(email: str, subject: str | None = None) -> UpstreamClaims:
    return UpstreamClaims(
        issuer=ISSUER, subject=subject or uuid4().hex, email=email, name="Upstream Person"
    )


async def test_first_sign_in_creates_a_free_user_and_links_it(database: AsyncEngine) -> None:
    claims = _claims(f"oidc-{uuid4().hex[:12]}@example.com")

    async with session_factory(database)() as session, session.begin():
        user = await user_for_upstream_identity(session, claims)

    async with session_factory(database)() as session:
        stored = await session.get(User, user.id)
        link = await session.get(UpstreamIdentity, (ISSUER, claims.subject))
        password = await session.get(LocalAccount, user.id)
    assert stored is not None
    assert (stored.email, stored.name, stored.subscription_tier) == (
        claims.email,
        "Upstream Person",
        "free",
    )
    assert link is not None
    assert link.user_id == user.id
    assert password is None  # no password: this user signs in upstream only


async def test_the_same_subject_is_the_same_user_even_with_a_new_email(
    database: AsyncEngine,
) -> None:
    first = _claims(f"oidc-{uuid4().hex[:12]}@example.com")
    async with session_factory(database)() as session, session.begin():
        user = await user_for_upstream_identity(session, first)
    moved = _claims(f"oidc-{uuid4().hex[:12]}@example.com", subject=first.subject)

    async with session_factory(database)() as session, session.begin():
        again = await user_for_upstream_identity(session, moved)

    assert again.id == user.id
    async with session_factory(database)() as session:
        users = await session.scalar(
            select(func.count()).where(col(User.email).in_([first.email, moved.email]))
        )
    assert users == 1


async def test_a_verified_email_of_an_existing_user_signs_in_as_that_user(
    database: AsyncEngine,
) -> None:
    email = f"oidc-{uuid4().hex[:12]}@example.com"
    async with session_factory(database)() as session, session.begin():
        existing, _ = await create_user(session, email, SubscriptionTier.PRO)

    async with session_factory(database)() as session, session.begin():
        user = await user_for_upstream_identity(session, _claims(email))

    assert user.id == existing.id
    assert user.subscription_tier == "pro"  # an existing user keeps their tier


@pytest.fixture(scope="module")
def provider() -> Iterator[OidcProvider]:
    with RunningProvider() as running:
        yield running


@pytest.fixture(scope="module")
async def oidc_gateway(
    nats_server: NatsServer,
    postgres_server: PostgresServer,
    gateway: RunningGateway,
    provider: OidcProvider,
) -> AsyncIterator[RunningGateway]:
    """A second gateway on the same servers that offers sign-in with the test provider."""
    log_dir = Path(tempfile.mkdtemp(prefix="ckrv-oidc-gateway-"))
    process, running = gateway_process(
        nats_url=nats_server.url,
        database_url=postgres_server.dsn,
        log_dir=log_dir,
        switches={
            "CKRV_GATEWAY_OIDC_ISSUER": provider.issuer,
            "CKRV_GATEWAY_OIDC_CLIENT_ID": CLIENT_ID,
            "CKRV_GATEWAY_OIDC_CLIENT_SECRET": CLIENT_SECRET,
        },
    )
    await process.start()
    try:
        yield running
    finally:
        await process.stop()
        shutil.rmtree(log_dir, ignore_errors=True)


@pytest.fixture
async def browser(oidc_gateway: RunningGateway) -> AsyncIterator[httpx.AsyncClient]:
    """A browser at the OpenID-enabled gateway that follows every redirect."""
    async with httpx.AsyncClient(
        base_url=oidc_gateway.url, timeout=30, follow_redirects=True
    ) as client:
        yield client


def _upstream_link(page: httpx.Response) -> str:
    found = re.search(
        r'<a class="button secondary" href="([^"]+)">Sign in with ([^<]+)</a>', page.text
    )
    assert found is not None, page.text
    return found.group(1).replace("&amp;", "&")


async def test_signing_in_upstream_creates_a_free_user_and_returns_to_the_code(
    browser: httpx.AsyncClient, provider: OidcProvider, oidc_gateway: RunningGateway
) -> None:
    email = f"oidc-{uuid4().hex[:12]}@example.com"
    provider.next_identity = Identity(subject=uuid4().hex, email=email)
    async with httpx.AsyncClient(base_url=oidc_gateway.api_url, timeout=30) as api:
        flow = await start_device_flow(api)
        sign_in = await browser.get("/activate", params={"user_code": flow["user_code"]})
        assert f"Sign in with 127.0.0.1:{provider.port}" in sign_in.text

        confirm = await browser.get(_upstream_link(sign_in))

        assert [hop.status_code for hop in confirm.history] == [302, 302, 303]
        assert confirm.status_code == 200, confirm.text
        assert f'id="user-code">{flow["user_code"]}<' in confirm.text
        assert email in confirm.text
        approved = await browser.post(
            "/activate",
            data={
                "csrf_token": csrf_token(confirm),
                "user_code": flow["user_code"],
                "decision": "approve",
            },
        )
        assert "Device connected" in approved.text
        tokens = (await poll_once(api, flow["device_code"])).json()
        me = await api.get(
            "/users/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}
        )
    assert me.json()["email"] == email
    assert me.json()["subscription_tier"] == "free"


async def test_an_unverified_upstream_email_is_refused(
    browser: httpx.AsyncClient, provider: OidcProvider
) -> None:
    email = f"oidc-{uuid4().hex[:12]}@example.com"
    provider.next_identity = Identity(subject=uuid4().hex, email=email, email_verified=False)

    refused = await browser.get("/activate/oidc/login")

    assert refused.status_code == 403
    assert "Verify your email address" in refused.text
    assert "ckrv_activation" not in browser.cookies


async def test_a_callback_the_gateway_did_not_start_is_refused(
    browser: httpx.AsyncClient, provider: OidcProvider
) -> None:
    before = provider.token_requests

    forged = await browser.get(
        "/activate/oidc/callback", params={"code": "stolen-code", "state": "made-up"}
    )

    assert forged.status_code == 401
    assert "did not confirm who you are" in forged.text
    assert provider.token_requests == before  # refused on the state, before any exchange
    assert "ckrv_activation" not in browser.cookies
