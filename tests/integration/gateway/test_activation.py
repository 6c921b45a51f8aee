"""The activation page over HTTP: accounts, CSRF, approving and denying a device, code states,
and the throttles on wrong codes and failed sign-ins, counted by all gateways together.

Throttled requests come from their own loopback addresses (127.0.0.x), so they use
up the budget of that address only and leave the other tests' 127.0.0.1 alone.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col

from ckrv.services.common.db import session_factory
from ckrv.services.gateway.identity.flows import normalise_user_code
from ckrv.services.gateway.identity.tables import DeviceAuthorization, LocalAccount
from ckrv.services.gateway.tables import User
from ckrv.services.stack.nats_server import NatsServer
from ckrv.services.stack.postgres_server import PostgresServer
from tests.integration.gateway.activation_page import (
    PASSWORD,
    Person,
    impossible_user_code,
    new_email,
    poll_once,
    start_device_flow,
)
from tests.running_gateway import RunningGateway, started_gateway

pytestmark = pytest.mark.integration

PersonFactory = Callable[..., Person]
# Each throttling test takes fresh source addresses from here.
_ADDRESSES = (f"127.0.{third}.{fourth}" for third in range(10, 250) for fourth in range(2, 250))


def fresh_addresses(count: int) -> list[str]:
    return list(itertools.islice(_ADDRESSES, count))


@pytest.fixture
async def api(gateway: RunningGateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.api_url, timeout=30) as client:
        yield client


@pytest.fixture
async def person_at(gateway: RunningGateway) -> AsyncIterator[PersonFactory]:
    """`person_at(address=None)`: a new browser, from 127.0.0.1 or the address given."""
    people: list[Person] = []

    def make(address: str | None = None) -> Person:
        person = Person.at(gateway, address)
        people.append(person)
        return person

    yield make
    for person in people:
        await person.close()


@pytest.fixture
def person(person_at: PersonFactory) -> Person:
    return person_at()


async def test_sign_up_creates_a_free_user_with_a_scrypt_hash_and_signs_in(
    person: Person, database: AsyncEngine
) -> None:
    first = await person.get("/activate")
    assert first.status_code == 200
    assert "Sign in" in first.text
    assert "Create an account" in first.text
    cookie = first.headers["set-cookie"].lower()
    for attribute in ("httponly", "samesite=lax", "path=/activate", "max-age="):
        assert attribute in cookie
    assert first.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in first.headers["content-security-policy"]

    signed_in = await person.sign_up()

    assert signed_in.status_code == 200
    assert "Connect a device" in signed_in.text
    assert f"Signed in as <strong>{person.email}</strong>" in signed_in.text
    async with session_factory(database)() as session:
        user = await session.scalar(select(User).where(col(User.email) == person.email))
        assert user is not None
        assert user.subscription_tier == "free"
        account = await session.get(LocalAccount, user.id)
    assert account is not None
    assert account.password_hash.startswith("scrypt$15$8$3$")
    assert PASSWORD not in account.password_hash


async def test_sign_in_needs_the_right_password(person_at: PersonFactory) -> None:
    owner = person_at()
    await owner.sign_up()
    again = person_at()
    again.email = owner.email.upper()  # emails are matched case-insensitively

    wrong = await again.sign_in(password="not the password at all")
    assert wrong.status_code == 401
    assert "Wrong email or password." in wrong.text
    assert "set-cookie" not in wrong.headers

    stranger = person_at()
    unknown = await stranger.sign_in()
    assert unknown.status_code == 401
    assert "Wrong email or password." in unknown.text

    right = await again.sign_in()
    assert right.status_code == 303
    assert right.headers["location"] == "/activate"
    page = await again.follow(right)
    assert "Connect a device" in page.text
    assert owner.email in page.text


async def test_sign_up_refuses_a_taken_email_a_short_password_and_a_bad_address(
    person_at: PersonFactory,
) -> None:
    first = person_at()
    await first.sign_up()
    second = person_at()
    second.email = first.email

    await second.get("/activate/sign-up")
    taken = await second.post(
        "/activate/sign-up",
        {"csrf_token": second.csrf, "email": first.email, "password": PASSWORD},
    )
    assert taken.status_code == 409
    assert "already exists" in taken.text

    short = await second.post(
        "/activate/sign-up",
        {"csrf_token": second.csrf, "email": new_email(), "password": "short"},
    )
    assert short.status_code == 400
    assert "at least 10 characters" in short.text

    bad = await second.post(
        "/activate/sign-up",
        {"csrf_token": second.csrf, "email": "not-an-address", "password": PASSWORD},
    )
    assert bad.status_code == 400
    assert "valid email" in bad.text


async def test_forms_without_the_sessions_csrf_token_are_refused(
    person_at: PersonFactory, api: httpx.AsyncClient
) -> None:
    owner = person_at()
    await owner.sign_up()
    flow = await start_device_flow(api)
    code = flow["user_code"]
    await owner.get("/activate", user_code=code)

    missing = await owner.http.post("/activate", data={"user_code": code, "decision": "approve"})
    wrong = await owner.http.post(
        "/activate", data={"csrf_token": "x" * 43, "user_code": code, "decision": "approve"}
    )
    assert missing.status_code == 403
    assert wrong.status_code == 403
    assert "did not come from this page" in wrong.text

    # A token read from the page is worthless without the cookie it belongs to.
    cookieless = person_at()
    stolen = await cookieless.http.post(
        "/activate", data={"csrf_token": owner.csrf, "user_code": code, "decision": "approve"}
    )
    assert stolen.status_code == 403
    sign_in = await cookieless.http.post(
        "/activate/sign-in",
        data={"csrf_token": owner.csrf, "email": owner.email, "password": PASSWORD},
    )
    assert sign_in.status_code == 403

    # Nothing was decided: the device is still waiting.
    pending = await poll_once(api, flow["device_code"])
    assert pending.json()["error"] == "authorization_pending"


async def test_approving_gives_the_waiting_cli_its_tokens(
    person: Person, api: httpx.AsyncClient, gateway: RunningGateway
) -> None:
    flow = await start_device_flow(api)
    code = flow["user_code"]
    assert flow["verification_uri_complete"].endswith(f"/activate?user_code={code}")

    # Following the complete URI while signed out: sign up, and land on the code's page.
    before = await person.get("/activate", user_code=code)
    assert f"confirm the code <strong>{code}</strong>" in before.text
    confirm = await person.sign_up(user_code=code)
    assert confirm.status_code == 200
    assert re.search(rf"<div class=\"code\" id=\"user-code\">{code}</div>", confirm.text), (
        confirm.text
    )
    assert "ckrv-cli" in confirm.text
    assert "Approve" in confirm.text
    assert "Deny" in confirm.text
    assert "Expires" in confirm.text

    approved = await person.decide(code, "approve")
    assert approved.status_code == 200, approved.text
    assert "Device connected" in approved.text

    tokens = await poll_once(api, flow["device_code"])
    assert tokens.status_code == 200, tokens.text
    body = tokens.json()
    assert body["token_type"] == "Bearer"
    me = await api.get("/users/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200, me.text
    assert me.json()["email"] == person.email
    assert me.json()["subscription_tier"] == "free"

    log = gateway.log_path.read_text()
    for secret in (PASSWORD, normalise_user_code(code), code, body["access_token"]):
        assert secret not in log


async def test_denying_tells_the_cli_access_denied(person: Person, api: httpx.AsyncClient) -> None:
    flow = await start_device_flow(api)
    await person.sign_up(user_code=flow["user_code"])

    denied = await person.decide(flow["user_code"], "deny")

    assert denied.status_code == 200
    assert "Request denied" in denied.text
    refused = await poll_once(api, flow["device_code"])
    assert refused.status_code == 400
    assert refused.json()["error"] == "access_denied"


async def test_a_used_code_says_so(person: Person, api: httpx.AsyncClient) -> None:
    approved_flow, denied_flow = await start_device_flow(api), await start_device_flow(api)
    await person.sign_up()
    await person.get("/activate", user_code=approved_flow["user_code"])
    await person.decide(approved_flow["user_code"], "approve")
    await person.get("/activate", user_code=denied_flow["user_code"])
    await person.decide(denied_flow["user_code"], "deny")

    again = await person.get("/activate", user_code=approved_flow["user_code"])
    assert again.status_code == 410
    assert "already approved" in again.text
    assert (await poll_once(api, approved_flow["device_code"])).status_code == 200
    consumed = await person.get("/activate", user_code=approved_flow["user_code"])
    assert consumed.status_code == 410
    assert "already approved and has been used" in consumed.text
    twice = await person.decide(approved_flow["user_code"], "deny")
    assert twice.status_code == 410

    after_deny = await person.get("/activate", user_code=denied_flow["user_code"])
    assert after_deny.status_code == 410
    assert "was denied" in after_deny.text


async def test_an_expired_code_says_so(
    person: Person, api: httpx.AsyncClient, database: AsyncEngine
) -> None:
    flow = await start_device_flow(api)
    await person.sign_up()
    await person.get("/activate", user_code=flow["user_code"])
    async with session_factory(database)() as session, session.begin():
        await session.execute(
            update(DeviceAuthorization)
            .where(col(DeviceAuthorization.user_code) == normalise_user_code(flow["user_code"]))
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )

    shown = await person.get("/activate", user_code=flow["user_code"])
    decided = await person.decide(flow["user_code"], "approve")

    for page in (shown, decided):
        assert page.status_code == 410
        assert "This code has expired." in page.text
        assert "ckrv cloud login" in page.text
    assert (await poll_once(api, flow["device_code"])).json()["error"] == "expired_token"


async def test_an_unknown_code_says_no_such_code_and_typed_text_stays_text(
    person: Person,
) -> None:
    await person.sign_up()

    unknown = await person.get("/activate", user_code=impossible_user_code())
    assert unknown.status_code == 404
    assert "No such code" in unknown.text

    hostile = await person.get("/activate", user_code='<script>alert("x")</script>')
    assert hostile.status_code == 404
    assert "<script>" not in hostile.text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in hostile.text


@pytest.fixture(scope="module")
async def closed_gateway(
    nats_server: NatsServer, postgres_server: PostgresServer, gateway: RunningGateway
) -> AsyncIterator[RunningGateway]:
    """A second gateway on the same servers, with sign-up turned off."""
    async with started_gateway(
        nats_url=nats_server.url,
        database_url=postgres_server.dsn,
        switches={"CKRV_GATEWAY_ALLOW_SIGNUP": "false"},
    ) as second:
        yield second


async def test_sign_up_can_be_turned_off(
    closed_gateway: RunningGateway, person_at: PersonFactory
) -> None:
    member = person_at()
    await member.sign_up()  # on the session's gateway, where sign-up is open
    visitor = Person.at(closed_gateway)
    try:
        sign_in = await visitor.get("/activate")
        assert sign_in.status_code == 200
        assert "Create an account" not in sign_in.text
        assert (await visitor.get("/activate/sign-up")).status_code == 403
        refused = await visitor.post(
            "/activate/sign-up",
            {"csrf_token": visitor.csrf, "email": new_email(), "password": PASSWORD},
        )
        assert refused.status_code == 403
        assert "Sign-up is closed" in refused.text
        # Existing accounts still sign in.
        visitor.email = member.email
        assert (await visitor.sign_in()).status_code == 303
    finally:
        await visitor.close()


async def test_wrong_codes_are_throttled_per_address(
    person_at: PersonFactory, api: httpx.AsyncClient
) -> None:
    guesser_address, other_address = fresh_addresses(2)
    flow = await start_device_flow(api)
    guesser = person_at(guesser_address)
    await guesser.sign_up()

    for _ in range(10):
        wrong = await guesser.get("/activate", user_code=impossible_user_code())
        assert wrong.status_code == 404

    blocked = await guesser.get("/activate", user_code=impossible_user_code())
    assert blocked.status_code == 429
    assert "Too many wrong codes" in blocked.text
    assert 0 < int(blocked.headers["retry-after"]) <= 15 * 60
    # Once blocked, a right code is refused too (else guessing just goes on),
    even_right = await guesser.get("/activate", user_code=flow["user_code"])
    assert even_right.status_code == 429
    decided = await guesser.decide(flow["user_code"], "approve")
    assert decided.status_code == 429
    # while another address is served.
    other = person_at(other_address)
    await other.sign_up()
    served = await other.get("/activate", user_code=flow["user_code"])
    assert served.status_code == 200
    assert (await poll_once(api, flow["device_code"])).json()["error"] == "authorization_pending"


async def test_one_wrong_code_is_throttled_across_addresses(
    person_at: PersonFactory, api: httpx.AsyncClient
) -> None:
    addresses = fresh_addresses(6)
    code = impossible_user_code()
    for address in addresses[:5]:
        guesser = person_at(address)
        await guesser.sign_up()
        assert (await guesser.get("/activate", user_code=code)).status_code == 404

    last = person_at(addresses[5])
    await last.sign_up()
    blocked = await last.get("/activate", user_code=code.lower().replace("-", " "))
    assert blocked.status_code == 429
    # Only that code: the same address still reaches a real one.
    flow = await start_device_flow(api)
    assert (await last.get("/activate", user_code=flow["user_code"])).status_code == 200


@asynccontextmanager
async def signed_in_at(gateway: RunningGateway, address: str, email: str) -> AsyncIterator[Person]:
    """A browser from `address` on `gateway`, signed in to the existing account `email`."""
    visitor = Person.at(gateway, address)
    visitor.email = email
    try:
        assert (await visitor.sign_in()).status_code == 303
        yield visitor
    finally:
        await visitor.close()


async def test_wrong_codes_are_counted_by_all_gateways_and_survive_a_restart(
    person_at: PersonFactory, nats_server: NatsServer, postgres_server: PostgresServer
) -> None:
    address = fresh_addresses(1)[0]
    first = person_at(address)
    await first.sign_up()

    def another_gateway() -> AbstractAsyncContextManager[RunningGateway]:
        return started_gateway(nats_url=nats_server.url, database_url=postgres_server.dsn)

    async with (
        another_gateway() as second_gateway,
        signed_in_at(second_gateway, address, first.email) as second,
    ):
        # Ten wrong codes in turn, five to each gateway: the budget of one.
        for guesser in [first, second] * 5:
            wrong = await guesser.get("/activate", user_code=impossible_user_code())
            assert wrong.status_code == 404
        for guesser in (first, second):
            blocked = await guesser.get("/activate", user_code=impossible_user_code())
            assert blocked.status_code == 429

    # A gateway process started afresh, as after a restart, knows the count too.
    async with (
        another_gateway() as restarted,
        signed_in_at(restarted, address, first.email) as after_restart,
    ):
        blocked = await after_restart.get("/activate", user_code=impossible_user_code())
        assert blocked.status_code == 429
        assert "Too many wrong codes" in blocked.text


async def test_failed_sign_ins_are_throttled_per_email(person_at: PersonFactory) -> None:
    owner = person_at(fresh_addresses(1)[0])
    await owner.sign_up()
    for address in fresh_addresses(5):
        attacker = person_at(address)
        attacker.email = owner.email
        assert (await attacker.sign_in(password="wrong password")).status_code == 401

    late = person_at(fresh_addresses(1)[0])
    late.email = owner.email
    blocked = await late.sign_in()
    assert blocked.status_code == 429
    assert "Too many failed sign-ins." in blocked.text


async def test_failed_sign_ins_are_throttled_per_address(person_at: PersonFactory) -> None:
    address = fresh_addresses(1)[0]
    owner = person_at(fresh_addresses(1)[0])
    await owner.sign_up()
    attacker = person_at(address)
    for _ in range(20):
        attacker.email = new_email()
        assert (await attacker.sign_in(password="wrong password")).status_code == 401

    attacker.email = owner.email
    blocked = await attacker.sign_in()
    assert blocked.status_code == 429
    assert int(blocked.headers["retry-after"]) > 0
    # The account itself is not locked: its owner signs in from elsewhere.
    assert (await owner.sign_in()).status_code == 303
