"""`ckrv webhooks add | list | deliveries | test | rotate-secret` against the contract server.

`remove` sends DELETE, which the contract server does not answer: it is driven
against the real gateway in `tests/integration/gateway/test_webhooks_cli.py`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ckrv.cli.commands import webhooks as webhooks_command
from tests.unit.cli.bodies import error_body
from tests.unit.cli.conftest import CliRunner
from tests.unit.cli.contract_server import ContractServer, Reply

WEBHOOK_ID = "7c4e2a10-5b6d-4e8f-9a01-23456789abcd"
OTHER_WEBHOOK_ID = "7c4e9999-0000-4000-8000-000000000002"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TERMINAL = ["job.rejected", "job.succeeded", "job.failed", "job.timed-out", "job.cancelled"]
DELIVERIES = f"/webhooks/{WEBHOOK_ID}/deliveries"


def ago(**delta: float) -> str:
    return (datetime.now(UTC) - timedelta(**delta)).isoformat()


def webhook_body(**overrides: Any) -> dict[str, Any]:
    return {
        "id": WEBHOOK_ID,
        "url": "https://hooks.example.com/ckrv",
        "event_types": TERMINAL,
        "description": "",
        "enabled": True,
        "disabled_reason": None,
        "consecutive_failures": 0,
        "created_at": ago(minutes=3),
        "updated_at": ago(minutes=3),
    } | overrides


def delivery_body(**overrides: Any) -> dict[str, Any]:
    return {
        "id": "01a2b3c4-0000-7000-8000-000000000001",
        "event_id": "01a2b3c4-0000-7000-8000-0000000000aa",
        "event_type": "webhook.ping",
        "status": "pending",
        "attempts": 0,
        "status_code": None,
        "latency_ms": None,
        "error": None,
        "next_attempt_at": ago(seconds=0),
        "last_attempt_at": None,
        "delivered_at": None,
        "created_at": ago(seconds=1),
    } | overrides


def page(*deliveries: dict[str, Any]) -> Reply:
    return Reply(200, {"deliveries": list(deliveries), "next_cursor": None})


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(webhooks_command, "PING_POLL_SECONDS", 0.01)


# ckrv webhooks add


def test_add_prints_the_id_and_the_secret_once(ckrv: CliRunner, api: ContractServer) -> None:
    api.reply("POST", "/webhooks", Reply(201, webhook_body(secret=SECRET)))

    result = ckrv("webhooks", "add", "https://hooks.example.com/ckrv", "--description", "CI")

    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"Added webhook {WEBHOOK_ID} for rejected, succeeded, failed, timed-out, cancelled.",
        f"Signing secret (shown once; receivers verify with it): {SECRET}",
        f"Send it a test event: ckrv webhooks test {WEBHOOK_ID}",
    ]
    (request,) = api.requests_to("POST", "/webhooks")
    assert request.body == {
        "url": "https://hooks.example.com/ckrv",
        "event_types": None,
        "description": "CI",
    }


def test_events_may_be_listed_or_comma_separated(ckrv: CliRunner, api: ContractServer) -> None:
    api.reply("POST", "/webhooks", Reply(201, webhook_body(secret=SECRET)))

    result = ckrv(
        "webhooks",
        "add",
        "https://hooks.example.com/ckrv",
        "--events",
        "job.succeeded,job.failed",
        "job.started",
    )

    assert result.exit_code == 0, result.stderr
    (request,) = api.requests_to("POST", "/webhooks")
    assert request.body["event_types"] == ["job.succeeded", "job.failed", "job.started"]


@pytest.mark.parametrize(
    ("flags", "lines"),
    [(("--json",), None), (("-q",), [WEBHOOK_ID, SECRET])],
)
def test_add_for_scripts(
    ckrv: CliRunner, api: ContractServer, flags: tuple[str, ...], lines: list[str] | None
) -> None:
    body = webhook_body(secret=SECRET)
    api.reply("POST", "/webhooks", Reply(201, body))

    result = ckrv("webhooks", "add", "https://hooks.example.com/ckrv", *flags)

    assert result.exit_code == 0, result.stderr
    if lines is None:
        assert json.loads(result.stdout) == body
    else:
        assert result.stdout.splitlines() == lines


def test_a_refused_url_says_why(ckrv: CliRunner, api: ContractServer) -> None:
    api.reply(
        "POST",
        "/webhooks",
        Reply(
            422,
            error_body(
                "webhook_url_not_allowed",
                "url: 10.0.0.1 is not a public address",
                details=[{"field": "url", "message": "10.0.0.1 is not a public address"}],
            ),
        ),
    )

    result = ckrv("webhooks", "add", "https://10.0.0.1/ckrv")

    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith("Error: url: 10.0.0.1 is not a public address\n")


def test_an_empty_events_option_is_refused_before_anything_is_sent(
    ckrv: CliRunner, api: ContractServer
) -> None:
    result = ckrv("webhooks", "add", "https://hooks.example.com/ckrv", "--events", ",")
    assert result.exit_code == 1
    assert "Error: --events names no event type" in result.stderr
    assert api.received == []


# ckrv webhooks list


def test_list_shows_a_table_without_secrets(ckrv: CliRunner, api: ContractServer) -> None:
    api.reply(
        "GET",
        "/webhooks",
        Reply(
            200,
            {
                "webhooks": [
                    webhook_body(),
                    webhook_body(
                        id=OTHER_WEBHOOK_ID,
                        url="http://127.0.0.1:9000/hook",
                        event_types=["job.started"],
                        enabled=False,
                        disabled_reason="gone",
                        created_at=ago(days=2, minutes=1),
                    ),
                ]
            },
        ),
    )

    result = ckrv("webhooks", "list")

    assert result.exit_code == 0, result.stderr
    events = "rejected, succeeded, failed, timed-out, cancelled"
    width = len(events)
    assert result.stdout.splitlines() == [
        f"{'ID':36}  STATE            {'EVENTS':{width}}  CREATED  URL",
        f"{WEBHOOK_ID}  enabled          {events}  3m ago   https://hooks.example.com/ckrv",
        f"{OTHER_WEBHOOK_ID}  disabled (gone)  {'started':{width}}  2d ago   "
        "http://127.0.0.1:9000/hook",
    ]


def test_an_empty_list_suggests_adding_one(ckrv: CliRunner, api: ContractServer) -> None:
    api.reply("GET", "/webhooks", Reply(200, {"webhooks": []}))
    assert ckrv("webhooks", "list").stdout.startswith("No webhooks yet. Add one: ckrv webhooks add")


def test_list_as_json_and_quietly(ckrv: CliRunner, api: ContractServer) -> None:
    body = {"webhooks": [webhook_body(), webhook_body(id=OTHER_WEBHOOK_ID)]}
    api.reply("GET", "/webhooks", Reply(200, body))
    assert json.loads(ckrv("webhooks", "list", "--json").stdout) == body
    assert ckrv("webhooks", "list", "-q").stdout == f"{WEBHOOK_ID}\n{OTHER_WEBHOOK_ID}\n"


# ckrv webhooks deliveries


def test_deliveries_show_attempts_answers_and_retries(ckrv: CliRunner, api: ContractServer) -> None:
    api.reply(
        "GET",
        DELIVERIES,
        page(
            delivery_body(
                event_type="job.failed",
                attempts=3,
                status_code=500,
                latency_ms=41.7,
                error="HTTP 500 Internal Server Error: boom",
                next_attempt_at=(datetime.now(UTC) + timedelta(minutes=30, seconds=20)).isoformat(),
                created_at=ago(hours=1, minutes=2),
            ),
            delivery_body(
                event_type="job.succeeded",
                status="succeeded",
                attempts=1,
                status_code=204,
                latency_ms=12.2,
                next_attempt_at=None,
                created_at=ago(days=1, hours=1),
            ),
            delivery_body(),
        ),
    )

    result = ckrv("webhooks", "deliveries", WEBHOOK_ID, "--limit", "3")

    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        "EVENT          STATUS     ATTEMPTS  CREATED   NEXT TRY  LAST ANSWER",
        "job.failed     pending    3         1h ago    in 30m    "
        "HTTP 500 Internal Server Error: boom in 42 ms",
        "job.succeeded  succeeded  1         1d ago    -         HTTP 204 in 12 ms",
        "webhook.ping   pending    0         just now  now       -",
    ]
    (request,) = api.requests_to("GET", DELIVERIES)
    assert request.query == {"limit": ["3"]}


def test_deliveries_as_json(ckrv: CliRunner, api: ContractServer) -> None:
    body = {"deliveries": [delivery_body()], "next_cursor": "01a2b3c4"}
    api.reply("GET", DELIVERIES, Reply(200, body))
    result = ckrv("webhooks", "deliveries", WEBHOOK_ID, "--json")
    assert json.loads(result.stdout) == body


@pytest.mark.parametrize("args", [("--limit", "0"), ("--limit", "101"), ("--limit", "all")])
def test_bad_limits_are_refused_before_anything_is_sent(
    ckrv: CliRunner, api: ContractServer, args: tuple[str, ...]
) -> None:
    result = ckrv("webhooks", "deliveries", WEBHOOK_ID, *args)
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ")
    assert api.received == []


# ckrv webhooks test


def test_a_ping_reports_its_first_attempt(ckrv: CliRunner, api: ContractServer) -> None:
    api.reply("POST", f"/webhooks/{WEBHOOK_ID}/test", Reply(202, delivery_body()))
    api.reply(
        "GET",
        DELIVERIES,
        page(delivery_body()),
        page(delivery_body(status="succeeded", attempts=1, status_code=200, latency_ms=8.4)),
    )

    result = ckrv("webhooks", "test", WEBHOOK_ID)

    assert (result.exit_code, result.stdout) == (0, "Ping delivered: HTTP 200 in 8 ms.\n")
    assert len(api.requests_to("GET", DELIVERIES)) == 2


def test_a_refused_ping_is_an_error_with_the_next_try(ckrv: CliRunner, api: ContractServer) -> None:
    api.reply("POST", f"/webhooks/{WEBHOOK_ID}/test", Reply(202, delivery_body()))
    retry_at = datetime(2025, 6, 1, 12, 0, 5, tzinfo=UTC)
    api.reply(
        "GET",
        DELIVERIES,
        page(
            delivery_body(
                attempts=1,
                status_code=503,
                latency_ms=3.0,
                error="HTTP 503 Service Unavailable",
                next_attempt_at=retry_at.isoformat(),
            )
        ),
    )

    result = ckrv("webhooks", "test", WEBHOOK_ID)

    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert lines[0] == "Error: the ping was not delivered: HTTP 503 Service Unavailable in 3 ms"
    assert lines[1].startswith("It is tried again at ")
    assert lines[1].endswith(f"Follow it with: ckrv webhooks deliveries {WEBHOOK_ID}")


def test_a_ping_need_not_be_waited_for(ckrv: CliRunner, api: ContractServer) -> None:
    api.reply("POST", f"/webhooks/{WEBHOOK_ID}/test", Reply(202, delivery_body()))

    result = ckrv("webhooks", "test", WEBHOOK_ID, "--no-wait")

    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        "Ping queued (delivery 01a2b3c4-0000-7000-8000-000000000001).",
        f"Follow it with: ckrv webhooks deliveries {WEBHOOK_ID}",
    ]
    assert api.requests_to("GET", DELIVERIES) == []


def test_a_webhook_is_found_by_the_start_of_its_id(ckrv: CliRunner, api: ContractServer) -> None:
    api.reply(
        "GET", "/webhooks", Reply(200, {"webhooks": [webhook_body(), webhook_body(id="0" * 32)]})
    )
    api.reply("POST", f"/webhooks/{WEBHOOK_ID}/test", Reply(202, delivery_body()))

    result = ckrv("webhooks", "test", WEBHOOK_ID[:6].upper(), "--no-wait")

    assert result.exit_code == 0, result.stderr
    assert len(api.requests_to("POST", f"/webhooks/{WEBHOOK_ID}/test")) == 1


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("7c4", "Error: '7c4' is not a webhook id"),
        ("hook-1", "Error: 'hook-1' is not a webhook id"),
        ("7c4e", "Error: 2 webhooks have ids starting with 7c4e"),
        ("abcd", "Error: no webhook of yours has an id starting with abcd"),
    ],
)
def test_an_id_that_names_no_single_webhook_is_refused(
    ckrv: CliRunner, api: ContractServer, ref: str, message: str
) -> None:
    api.reply(
        "GET",
        "/webhooks",
        Reply(200, {"webhooks": [webhook_body(), webhook_body(id=OTHER_WEBHOOK_ID)]}),
    )

    result = ckrv("webhooks", "test", ref)

    assert result.exit_code == 1
    assert result.stderr.startswith(message)
    assert [request.method for request in api.received] in ([], ["GET"])


# ckrv webhooks rotate-secret


def test_rotate_secret_prints_the_new_one_and_the_old_ones_end(
    ckrv: CliRunner, api: ContractServer
) -> None:
    api.reply(
        "POST",
        f"/webhooks/{WEBHOOK_ID}/rotate-secret",
        Reply(200, {"secret": SECRET, "previous_secret_valid_until": "2025-06-02T12:00:00Z"}),
    )

    result = ckrv("webhooks", "rotate-secret", WEBHOOK_ID)

    assert result.exit_code == 0, result.stderr
    first, second = result.stdout.splitlines()
    assert first == f"New signing secret (shown once): {SECRET}"
    assert second.startswith("Deliveries carry a signature by the previous secret as well until ")
    assert ckrv("webhooks", "rotate-secret", WEBHOOK_ID, "-q").stdout == f"{SECRET}\n"
