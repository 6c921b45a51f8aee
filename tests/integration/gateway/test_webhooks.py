"""`/v1/webhooks` on the session's gateway (a development stack): endpoints, secrets, deliveries.

Sending is the notifier's (tests in `tests/integration/notifier/`); here the
deliveries a ping or a redelivery records are read back through the API.
Secrets are opened the way the notifier opens them, with the development key
ring the gateway runs with.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col

from ckrv.events.envelope import utc_now
from ckrv.schemas.webhooks import MAX_DESCRIPTION_LENGTH, MAX_URL_LENGTH, TERMINAL_EVENT_TYPES
from ckrv.services.common.db import session_factory
from ckrv.services.gateway.routes.webhooks import MAX_WEBHOOKS_PER_USER
from ckrv.services.notifier.deliveries import signing_secrets
from ckrv.services.notifier.signing import open_secret
from ckrv.services.notifier.tables import WebhookDelivery, WebhookEndpoint
from tests.integration.gateway.conftest import ClientFactory
from tests.integration.gateway.credentials import GATEWAY_KEYS
from tests.running_gateway import RunningGateway

pytestmark = pytest.mark.integration

PUBLIC_FIELDS = {
    "id",
    "url",
    "event_types",
    "description",
    "enabled",
    "disabled_reason",
    "consecutive_failures",
    "created_at",
    "updated_at",
}
DELIVERY_FIELDS = {
    "id",
    "event_id",
    "event_type",
    "status",
    "attempts",
    "status_code",
    "latency_ms",
    "error",
    "next_attempt_at",
    "last_attempt_at",
    "delivered_at",
    "created_at",
}
URL = "http://127.0.0.1:9/ckrv-hooks"


def add(client: httpx.Client, **fields: Any) -> httpx.Response:
    return client.post("/webhooks", json={"url": URL} | fields)


def added(client: httpx.Client, **fields: Any) -> dict[str, Any]:
    response = add(client, **fields)
    assert response.status_code == 201, response.text
    webhook: dict[str, Any] = response.json()
    return webhook


def listed(client: httpx.Client) -> list[dict[str, Any]]:
    response = client.get("/webhooks")
    assert response.status_code == 200, response.text
    webhooks: list[dict[str, Any]] = response.json()["webhooks"]
    return webhooks


def deliveries(client: httpx.Client, webhook_id: str, **params: Any) -> dict[str, Any]:
    response = client.get(f"/webhooks/{webhook_id}/deliveries", params=params)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


def user_id(client: httpx.Client) -> UUID:
    return UUID(client.get("/users/me").json()["id"])


async def stored(database: AsyncEngine, webhook_id: str) -> WebhookEndpoint | None:
    async with session_factory(database)() as session:
        return await session.get(WebhookEndpoint, UUID(webhook_id))


async def opened_secrets(database: AsyncEngine, webhook_id: str) -> list[str]:
    """The secrets that sign the webhook's deliveries now, opened as the notifier opens them."""
    endpoint = await stored(database, webhook_id)
    assert endpoint is not None
    return [
        open_secret(GATEWAY_KEYS, endpoint.id, sealed)
        for sealed in signing_secrets(endpoint, utc_now())
    ]


async def webhooks_of(database: AsyncEngine, owner: UUID) -> int:
    async with session_factory(database)() as session:
        count = await session.scalar(
            select(func.count()).where(col(WebhookEndpoint.user_id) == owner)
        )
    return count or 0


async def test_add_read_change_and_remove(client: httpx.Client, database: AsyncEngine) -> None:
    created = add(client, description="CI status board")

    assert created.status_code == 201, created.text
    webhook = created.json()
    secret = webhook.pop("secret")
    assert set(webhook) == PUBLIC_FIELDS
    assert webhook["url"] == URL
    assert webhook["event_types"] == list(TERMINAL_EVENT_TYPES)
    assert (webhook["enabled"], webhook["disabled_reason"]) == (True, None)
    assert created.headers["location"] == f"/v1/webhooks/{webhook['id']}"
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 24
    assert listed(client) == [webhook]
    assert client.get(f"/webhooks/{webhook['id']}").json() == webhook
    # Sealed at rest, bound to its endpoint, and what the notifier will sign with.
    endpoint = await stored(database, webhook["id"])
    assert endpoint is not None
    assert secret.encode() not in endpoint.secret_ciphertext
    assert await opened_secrets(database, webhook["id"]) == [secret]

    changed = client.patch(
        f"/webhooks/{webhook['id']}",
        json={
            "url": "https://hooks.example.com/ckrv",
            "event_types": ["job.succeeded", "job.started"],
            "description": "",
        },
    )
    assert changed.status_code == 200, changed.text
    assert changed.json() | {"updated_at": None} == webhook | {
        "url": "https://hooks.example.com/ckrv",
        # In the catalog's order, whatever the request's.
        "event_types": ["job.started", "job.succeeded"],
        "description": "",
        "updated_at": None,
    }
    assert "secret" not in changed.text

    removed = client.delete(f"/webhooks/{webhook['id']}")
    assert (removed.status_code, removed.content) == (204, b"")
    assert listed(client) == []
    assert await stored(database, webhook["id"]) is None
    again = client.delete(f"/webhooks/{webhook['id']}")
    assert (again.status_code, again.json()["error"]) == (404, "not_found")


def test_the_owner_disables_and_enables_an_endpoint(client: httpx.Client) -> None:
    webhook = added(client, enabled=False)
    assert (webhook["enabled"], webhook["disabled_reason"]) == (False, "by_owner")

    enabled = client.patch(f"/webhooks/{webhook['id']}", json={"enabled": True}).json()
    assert (enabled["enabled"], enabled["disabled_reason"]) == (True, None)
    ping = client.post(f"/webhooks/{webhook['id']}/test").json()
    disabled = client.patch(f"/webhooks/{webhook['id']}", json={"enabled": False}).json()
    assert (disabled["enabled"], disabled["disabled_reason"]) == (False, "by_owner")

    refused = [
        client.post(f"/webhooks/{webhook['id']}/test"),
        client.post(f"/webhooks/{webhook['id']}/deliveries/{ping['id']}/redeliver"),
    ]
    assert [(answer.status_code, answer.json()["error"]) for answer in refused] == [
        (409, "webhook_disabled")
    ] * 2
    assert deliveries(client, webhook["id"])["deliveries"] == [ping]


async def test_a_rotated_secret_signs_beside_the_previous_one_for_a_day(
    client: httpx.Client, database: AsyncEngine
) -> None:
    webhook = added(client)
    first = webhook["secret"]

    rotated = client.post(f"/webhooks/{webhook['id']}/rotate-secret")

    assert rotated.status_code == 200, rotated.text
    answer = rotated.json()
    assert set(answer) == {"secret", "previous_secret_valid_until"}
    second = answer["secret"]
    assert second.startswith("whsec_")
    assert second != first
    valid_until = datetime.fromisoformat(answer["previous_secret_valid_until"])
    assert utc_now() + timedelta(hours=23) < valid_until <= utc_now() + timedelta(hours=24)
    assert await opened_secrets(database, webhook["id"]) == [second, first]

    # A second rotation drops the first secret: only the two latest sign.
    third = client.post(f"/webhooks/{webhook['id']}/rotate-secret").json()["secret"]
    assert await opened_secrets(database, webhook["id"]) == [third, second]
    assert first not in client.get(f"/webhooks/{webhook['id']}").text


def test_a_ping_and_a_redelivery_wait_for_the_notifier(client: httpx.Client) -> None:
    webhook = added(client)

    ping = client.post(f"/webhooks/{webhook['id']}/test")

    assert ping.status_code == 202, ping.text
    delivery = ping.json()
    assert set(delivery) == DELIVERY_FIELDS
    assert (delivery["event_type"], delivery["status"], delivery["attempts"]) == (
        "webhook.ping",
        "pending",
        0,
    )
    assert deliveries(client, webhook["id"]) == {"deliveries": [delivery], "next_cursor": None}

    again = client.post(f"/webhooks/{webhook['id']}/deliveries/{delivery['id']}/redeliver")
    assert again.status_code == 202, again.text
    assert again.json()["event_id"] == delivery["event_id"]
    assert again.json()["status"] == "pending"

    unknown = client.post(f"/webhooks/{webhook['id']}/deliveries/{uuid4()}/redeliver")
    assert (unknown.status_code, unknown.json()["error"]) == (404, "not_found")


def test_deliveries_come_newest_first_a_page_at_a_time(client: httpx.Client) -> None:
    webhook = added(client)
    pings = [client.post(f"/webhooks/{webhook['id']}/test").json()["id"] for _ in range(5)]

    first = deliveries(client, webhook["id"], limit=2)
    second = deliveries(client, webhook["id"], limit=2, cursor=first["next_cursor"])
    last = deliveries(client, webhook["id"], limit=2, cursor=second["next_cursor"])

    pages = [first, second, last]
    assert [[d["id"] for d in page["deliveries"]] for page in pages] == [
        pings[4:2:-1],
        pings[2:0:-1],
        pings[:1],
    ]
    assert last["next_cursor"] is None
    assert deliveries(client, webhook["id"], status="succeeded")["deliveries"] == []
    assert len(deliveries(client, webhook["id"], status="pending")["deliveries"]) == 5


async def test_webhooks_are_their_owners_alone(
    client_for: ClientFactory, database: AsyncEngine
) -> None:
    owner, other = client_for(), client_for()
    webhook = added(owner)
    ping = owner.post(f"/webhooks/{webhook['id']}/test").json()
    base = f"/webhooks/{webhook['id']}"

    answers = [
        other.get(base),
        other.patch(base, json={"enabled": False}),
        other.delete(base),
        other.post(f"{base}/rotate-secret"),
        other.post(f"{base}/test"),
        other.get(f"{base}/deliveries"),
        other.post(f"{base}/deliveries/{ping['id']}/redeliver"),
    ]

    assert [(answer.status_code, answer.json()["error"]) for answer in answers] == [
        (404, "not_found")
    ] * len(answers)
    assert listed(other) == []
    assert await opened_secrets(database, webhook["id"]) == [webhook["secret"]]
    mine = owner.get(base).json()
    assert mine["enabled"] is True
    assert [d["id"] for d in deliveries(owner, webhook["id"])["deliveries"]] == [ping["id"]]
    # A delivery is reached through its own webhook only, even by its owner.
    second = added(owner)
    crossed = owner.post(f"/webhooks/{second['id']}/deliveries/{ping['id']}/redeliver")
    assert (crossed.status_code, crossed.json()["error"]) == (404, "not_found")


async def test_an_owner_has_at_most_a_hundred(client: httpx.Client, database: AsyncEngine) -> None:
    for _ in range(MAX_WEBHOOKS_PER_USER):
        assert add(client).status_code == 201

    refused = add(client)

    assert refused.status_code == 409, refused.text
    assert refused.json()["error"] == "webhook_limit_reached"
    assert await webhooks_of(database, user_id(client)) == MAX_WEBHOOKS_PER_USER


@dataclass(frozen=True)
class Bad:
    """A bad `POST /webhooks`: its body (or raw content), its error code and the field named."""

    field: str
    body: dict[str, Any] | None = None
    content: bytes | None = None
    code: str = "validation_error"


def bad(field: str, code: str = "validation_error", **fields: Any) -> Bad:
    return Bad(field, {"url": URL} | fields, code=code)


NOT_ALLOWED = "webhook_url_not_allowed"
BAD_REQUESTS: dict[str, Bad] = {
    "url missing": Bad("url", {"event_types": ["job.succeeded"]}),
    "url not a string": bad("url", url=["https://hooks.example.com"]),
    "url null": bad("url", url=None),
    "url too long": bad("url", url="https://hooks.example.com/" + "a" * MAX_URL_LENGTH),
    "url without scheme": bad("url", NOT_ALLOWED, url="hooks.example.com/ckrv"),
    "url ftp": bad("url", NOT_ALLOWED, url="ftp://hooks.example.com/ckrv"),
    "url javascript": bad("url", NOT_ALLOWED, url="javascript:alert(1)"),
    "url without host": bad("url", NOT_ALLOWED, url="https:///ckrv"),
    "url with a bad port": bad("url", NOT_ALLOWED, url="https://hooks.example.com:0x50/"),
    "url with a password": bad("url", NOT_ALLOWED, url="https://me:pw@hooks.example.com/"),
    "url with a fragment": bad("url", NOT_ALLOWED, url="https://hooks.example.com/#top"),
    "event types empty": bad("event_types", event_types=[]),
    "event type unknown": bad("event_types", event_types=["job.exploded"]),
    "event type a ping": bad("event_types", event_types=["webhook.ping"]),
    "event types not a list": bad("event_types", event_types="job.succeeded"),
    "description too long": bad("description", description="d" * (MAX_DESCRIPTION_LENGTH + 1)),
    "enabled not a boolean": bad("enabled", enabled="maybe"),
    "unknown field": bad("secret", secret="whsec_mine"),
    "body not json": Bad("body", content=b'{"url": '),
    "body a list": Bad("body", content=b"[]"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
async def test_bad_input_is_refused_and_stores_nothing(
    case: Bad, client: httpx.Client, database: AsyncEngine
) -> None:
    if case.content is not None:
        response = client.post(
            "/webhooks", content=case.content, headers={"content-type": "application/json"}
        )
    else:
        response = client.post("/webhooks", json=case.body)

    assert response.status_code == 422, response.text
    answer = response.json()
    assert answer["error"] == case.code
    assert case.field in [detail["field"] for detail in answer["details"]], answer
    assert await webhooks_of(database, user_id(client)) == 0


BAD_CHANGES: dict[str, tuple[dict[str, Any], str]] = {
    "url null": ({"url": None}, "validation_error"),
    "url ftp": ({"url": "ftp://hooks.example.com/"}, NOT_ALLOWED),
    "event types empty": ({"event_types": []}, "validation_error"),
    "event type unknown": ({"event_types": ["job.done"]}, "validation_error"),
    "enabled null": ({"enabled": None}, "validation_error"),
    "description null": ({"description": None}, "validation_error"),
    "secret": ({"secret": "whsec_mine"}, "validation_error"),
}


@pytest.mark.parametrize(("change", "code"), BAD_CHANGES.values(), ids=BAD_CHANGES.keys())
def test_bad_changes_are_refused_and_change_nothing(
    change: dict[str, Any], code: str, client: httpx.Client
) -> None:
    webhook = added(client)
    webhook.pop("secret")

    response = client.patch(f"/webhooks/{webhook['id']}", json=change)

    assert response.status_code == 422, response.text
    assert response.json()["error"] == code
    assert client.get(f"/webhooks/{webhook['id']}").json() == webhook


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/webhooks/not-an-id"),
        ("PATCH", "/webhooks/not-an-id"),
        ("DELETE", "/webhooks/42"),
        ("POST", "/webhooks/not-an-id/test"),
        ("GET", f"/webhooks/{uuid4()}/deliveries?cursor=yesterday"),
        ("GET", f"/webhooks/{uuid4()}/deliveries?limit=0"),
        ("GET", f"/webhooks/{uuid4()}/deliveries?status=lost"),
        ("POST", f"/webhooks/{uuid4()}/deliveries/not-an-id/redeliver"),
    ],
)
def test_bad_ids_and_parameters_are_validation_errors(
    client: httpx.Client, method: str, path: str
) -> None:
    response = client.request(method, path, json={})
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "validation_error"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/webhooks"),
        ("GET", "/webhooks"),
        ("PATCH", f"/webhooks/{uuid4()}"),
        ("DELETE", f"/webhooks/{uuid4()}"),
        ("POST", f"/webhooks/{uuid4()}/rotate-secret"),
        ("POST", f"/webhooks/{uuid4()}/test"),
        ("GET", f"/webhooks/{uuid4()}/deliveries"),
        ("POST", f"/webhooks/{uuid4()}/deliveries/{uuid4()}/redeliver"),
    ],
)
def test_every_endpoint_needs_a_token(gateway: RunningGateway, method: str, path: str) -> None:
    response = httpx.request(method, gateway.api_url + path, json={"url": URL})
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"


async def test_secrets_are_never_in_listings_or_logs(
    client: httpx.Client, gateway: RunningGateway, database: AsyncEngine
) -> None:
    webhook = added(client)
    rotated = client.post(f"/webhooks/{webhook['id']}/rotate-secret").json()["secret"]
    ping = client.post(f"/webhooks/{webhook['id']}/test")
    answers = [
        client.get("/webhooks"),
        client.get(f"/webhooks/{webhook['id']}"),
        client.patch(f"/webhooks/{webhook['id']}", json={"description": "x"}),
        ping,
        client.get(f"/webhooks/{webhook['id']}/deliveries"),
    ]
    assert [answer.status_code for answer in answers] == [200, 200, 200, 202, 200]
    async with session_factory(database)() as session:
        rows = (
            await session.scalars(
                select(WebhookDelivery).where(
                    col(WebhookDelivery.endpoint_id) == UUID(webhook["id"])
                )
            )
        ).all()
    assert len(rows) == 1
    for secret in (webhook["secret"], rotated):
        for answer in answers:
            assert secret not in answer.text
        assert secret not in gateway.log_path.read_text()
    assert f'"webhook_id": "{webhook["id"]}"' in gateway.log_path.read_text()
