"""`ckrv webhooks add | list | remove | deliveries | test | rotate-secret`: signed webhooks.

The service POSTs a signed JSON message (Standard Webhooks) to each of your
webhooks when one of your jobs ends, or on the job events you choose. Receivers
check it with the webhook's signing secret, which is shown once: when the
webhook is added, and when a new one is made by `rotate-secret`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Annotated

import cyclopts
from cyclopts import Parameter
from cyclopts.validators import Number

from ckrv.cli.client import CloudClient
from ckrv.cli.errors import CliError, CloudError, UsageError
from ckrv.cli.models import Webhook, WebhookDelivery
from ckrv.cli.options import DEFAULT_OPTIONS, CommonOptions
from ckrv.cli.output import Spinner
from ckrv.cli.render import (
    NONE,
    format_age,
    format_rough_duration,
    format_table,
    format_time,
)

MIN_PREFIX_LENGTH = 4
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
# How long `test` waits for the ping's first attempt, and how often it looks.
PING_WAIT_SECONDS = 15.0
PING_POLL_SECONDS = 0.5

WebhookRef = Annotated[
    str, Parameter(name="WEBHOOK_ID", help="Webhook id, or its first characters (at least 4).")
]

webhooks = cyclopts.App(
    name="webhooks",
    help="Tell other systems when your jobs end: signed webhooks (Standard Webhooks).",
)


@webhooks.command
def add(
    url: Annotated[str, Parameter(name="URL")],
    /,
    *,
    events: Annotated[
        list[str] | None, Parameter(name="--events", consume_multiple=True, negative="")
    ] = None,
    description: str = "",
    options: CommonOptions = DEFAULT_OPTIONS,
) -> None:
    """Add a webhook; its signing secret is printed once, keep it where the receiver runs.

    Parameters
    ----------
    url
        Where to POST the events: https on a public address (a local stack takes http too).
    events
        Job event types to send, e.g. `job.succeeded job.failed` (or comma-separated);
        by default every way a job ends: succeeded, failed, timed-out, cancelled, rejected.
    description
        A note for yourself: what the webhook is for.
    """
    out = options.output()
    event_types = _event_types(events)
    with CloudClient.from_environment(profile=options.profile, log=out.debug) as client:
        webhook = client.add_webhook(url=url, event_types=event_types, description=description)
    if out.json:
        out.data(webhook.body)
        return
    if out.quiet:
        out.result(webhook.id)
        out.result(webhook.secret or "")
        return
    out.result(f"Added webhook {webhook.id} for {describe_events(webhook.event_types)}.")
    out.result(f"Signing secret (shown once; receivers verify with it): {webhook.secret}")
    out.info(f"Send it a test event: ckrv webhooks test {webhook.id}")


@webhooks.command(name="list")
def list_webhooks(*, options: CommonOptions = DEFAULT_OPTIONS) -> None:
    """List your webhooks (never their secrets)."""
    out = options.output()
    with CloudClient.from_environment(profile=options.profile, log=out.debug) as client:
        listing = client.list_webhooks()
    if out.json:
        out.data(listing.body)
        return
    if out.quiet:
        for webhook in listing.webhooks:
            out.result(webhook.id)
        return
    if not listing.webhooks:
        out.result("No webhooks yet. Add one: ckrv webhooks add https://example.com/ckrv-hook")
        return
    out.result(webhooks_table(listing.webhooks, now=datetime.now(UTC)))


@webhooks.command
def remove(webhook_id: WebhookRef, /, *, options: CommonOptions = DEFAULT_OPTIONS) -> None:
    """Remove a webhook; nothing more is sent to it."""
    out = options.output()
    with CloudClient.from_environment(profile=options.profile, log=out.debug) as client:
        full_id = resolve_webhook_id(client, webhook_id)
        client.remove_webhook(full_id)
    if out.json:
        out.data({"id": full_id, "removed": True})
    elif not out.quiet:
        out.result(f"Removed webhook {full_id}.")


@webhooks.command
def deliveries(
    webhook_id: WebhookRef,
    /,
    *,
    limit: Annotated[int, Parameter(validator=Number(gte=1, lte=MAX_LIMIT))] = DEFAULT_LIMIT,
    options: CommonOptions = DEFAULT_OPTIONS,
) -> None:
    """Show a webhook's latest deliveries: attempts, the last answer, the next retry.

    Parameters
    ----------
    limit
        How many deliveries to show, newest first.
    """
    out = options.output()
    with CloudClient.from_environment(profile=options.profile, log=out.debug) as client:
        page = client.webhook_deliveries(resolve_webhook_id(client, webhook_id), limit=limit)
    if out.json:
        out.data(page.body)
        return
    if out.quiet:
        for delivery in page.deliveries:
            out.result(delivery.id)
        return
    if not page.deliveries:
        out.result("No deliveries yet.")
        return
    out.result(deliveries_table(page.deliveries, now=datetime.now(UTC)))


@webhooks.command(name="test")
def ping(
    webhook_id: WebhookRef,
    /,
    *,
    wait: Annotated[bool, Parameter(negative="--no-wait")] = True,
    options: CommonOptions = DEFAULT_OPTIONS,
) -> None:
    """Send the webhook a `webhook.ping` event, and say how its first attempt went.

    Parameters
    ----------
    wait
        Wait (up to 15 s) for the first attempt; with --no-wait, only queue the ping.
    """
    out = options.output()
    with CloudClient.from_environment(profile=options.profile, log=out.debug) as client:
        full_id = resolve_webhook_id(client, webhook_id)
        delivery = client.test_webhook(full_id)
        if wait:
            spinner = Spinner(
                "Waiting for the ping's first attempt…",
                out.stderr,
                enabled=out.stderr.isatty() and not out.json,
            )
            try:
                delivery = wait_for_attempt(client, full_id, delivery, pause=spinner.wait)
            finally:
                spinner.clear()
    if out.json:
        out.data(delivery.body)
    if delivery.attempts == 0:
        if not out.json:
            out.result(f"Ping queued (delivery {delivery.id}).")
            out.info(f"Follow it with: ckrv webhooks deliveries {full_id}")
        return
    if delivery.status == "succeeded":
        if not (out.json or out.quiet):
            out.result(f"Ping delivered: {answer_text(delivery)}.")
        return
    # The receiving end is the user's to fix: exit 1, like a refused request.
    raise CliError(
        f"the ping was not delivered: {answer_text(delivery)}",
        code="webhook_failed",
        hint=retry_hint(delivery, full_id),
    )


@webhooks.command(name="rotate-secret")
def rotate_secret(webhook_id: WebhookRef, /, *, options: CommonOptions = DEFAULT_OPTIONS) -> None:
    """Make a new signing secret; the previous one keeps signing too for 24 hours."""
    out = options.output()
    with CloudClient.from_environment(profile=options.profile, log=out.debug) as client:
        rotated = client.rotate_webhook_secret(resolve_webhook_id(client, webhook_id))
    if out.json:
        out.data(rotated.body)
        return
    if out.quiet:
        out.result(rotated.secret)
        return
    out.result(f"New signing secret (shown once): {rotated.secret}")
    out.result(
        "Deliveries carry a signature by the previous secret as well until "
        f"{format_time(rotated.previous_secret_valid_until)}; switch your receivers before then."
    )


def _event_types(events: Sequence[str] | None) -> list[str] | None:
    if events is None:
        return None
    names = [name for text in events for name in text.replace(",", " ").split()]
    if not names:
        raise UsageError(
            "--events names no event type",
            hint="Name one or more, e.g. --events job.succeeded job.failed, or leave it out.",
        )
    return names


def resolve_webhook_id(client: CloudClient, ref: str) -> str:
    """The full id a webhook id or id prefix stands for; `UsageError` for neither."""
    text = ref.strip().lower()
    try:
        return str(uuid.UUID(text))
    except ValueError:
        pass
    if len(text) < MIN_PREFIX_LENGTH or any(c not in "0123456789abcdef-" for c in text):
        raise UsageError(
            f"{ref!r} is not a webhook id",
            hint="Give the id `ckrv webhooks add` printed, or the first characters "
            "`ckrv webhooks list` shows.",
        )
    matches = [w.id for w in client.list_webhooks().webhooks if w.id.lower().startswith(text)]
    if not matches:
        raise CloudError(
            "not_found", f"no webhook of yours has an id starting with {text}", None, 404
        )
    if len(matches) > 1:
        raise UsageError(
            f"{len(matches)} webhooks have ids starting with {text}: {', '.join(matches)}",
            hint="Give more characters of the id.",
        )
    return matches[0]


def wait_for_attempt(
    client: CloudClient,
    webhook_id: str,
    delivery: WebhookDelivery,
    *,
    pause: Callable[[float], None],
    within: float = PING_WAIT_SECONDS,
) -> WebhookDelivery:
    """The delivery once it has been attempted, or as it is after `within` seconds."""
    deadline = time.monotonic() + within
    while delivery.attempts == 0 and time.monotonic() < deadline:
        pause(PING_POLL_SECONDS)
        page = client.webhook_deliveries(webhook_id, limit=MAX_LIMIT)
        delivery = next((d for d in page.deliveries if d.id == delivery.id), delivery)
    return delivery


def answer_text(delivery: WebhookDelivery) -> str:
    """The latest attempt's outcome: `HTTP 200 in 35 ms`, or its error."""
    latency = f" in {delivery.latency_ms:.0f} ms" if delivery.latency_ms is not None else ""
    if delivery.error:
        return delivery.error + latency
    if delivery.status_code is not None:
        return f"HTTP {delivery.status_code}{latency}"
    return "not attempted yet"


def retry_hint(delivery: WebhookDelivery, webhook_id: str) -> str:
    follow = f"Follow it with: ckrv webhooks deliveries {webhook_id}"
    if delivery.status == "pending" and delivery.next_attempt_at is not None:
        return f"It is tried again at {format_time(delivery.next_attempt_at)}. {follow}"
    return follow


def describe_events(event_types: Sequence[str]) -> str:
    """`job.succeeded, job.failed` → `succeeded, failed` (every type starts `job.`)."""
    return ", ".join(name.removeprefix("job.") for name in event_types)


def webhook_state(webhook: Webhook) -> str:
    if webhook.enabled:
        return "enabled"
    return f"disabled ({webhook.disabled_reason})" if webhook.disabled_reason else "disabled"


def webhooks_table(listed: Sequence[Webhook], now: datetime) -> str:
    headers = ("ID", "STATE", "EVENTS", "CREATED", "URL")
    rows = [
        (
            webhook.id,
            webhook_state(webhook),
            describe_events(webhook.event_types),
            format_age(webhook.created_at, now),
            webhook.url,
        )
        for webhook in listed
    ]
    return format_table(headers, rows)


def deliveries_table(listed: Sequence[WebhookDelivery], now: datetime) -> str:
    headers = ("EVENT", "STATUS", "ATTEMPTS", "CREATED", "NEXT TRY", "LAST ANSWER")
    rows = [
        (
            delivery.event_type,
            delivery.status,
            str(delivery.attempts),
            format_age(delivery.created_at, now),
            _next_try(delivery, now),
            answer_text(delivery) if delivery.attempts else NONE,
        )
        for delivery in listed
    ]
    return format_table(headers, rows)


def _next_try(delivery: WebhookDelivery, now: datetime) -> str:
    if delivery.status != "pending" or delivery.next_attempt_at is None:
        return NONE
    seconds = (delivery.next_attempt_at - now).total_seconds()
    return "now" if seconds < 1 else f"in {format_rough_duration(seconds)}"
