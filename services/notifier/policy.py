"""What an attempt's outcome means for its delivery and its endpoint: pure rules, no I/O.

A 2xx answer is success. 410 Gone fails the delivery and disables the endpoint.
Anything else — another status, a timeout, a refused connection or address — is
retried on the schedule until it is used up. An endpoint whose attempts fail
often enough in a row is disabled as well, until its owner enables it again.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from ckrv.schemas.webhooks import DeliveryStatus, DisabledReason

GONE = 410


@dataclass(frozen=True)
class AttemptOutcome:
    """How one attempt went: the answer's status, or why there was none."""

    status_code: int | None
    latency_ms: float
    error: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclass(frozen=True)
class NextStep:
    """The delivery's state after an attempt, and whether its endpoint is done with."""

    status: DeliveryStatus
    next_attempt_at: datetime | None
    disable_endpoint: DisabledReason | None = None


def after_attempt(
    outcome: AttemptOutcome,
    *,
    failures_before: int,
    now: datetime,
    retry_delays: Sequence[float],
    jitter: float,
) -> NextStep:
    """Where a delivery goes after an attempt.

    `failures_before` counts the delivery's earlier failed attempts (its place in
    the schedule); `jitter` is the fraction, between -1 and 1 times the configured
    spread, by which this retry's delay is stretched.
    """
    if outcome.succeeded:
        return NextStep(DeliveryStatus.SUCCEEDED, None)
    if outcome.status_code == GONE:
        return NextStep(DeliveryStatus.FAILED, None, DisabledReason.GONE)
    if failures_before >= len(retry_delays):
        return NextStep(DeliveryStatus.FAILED, None)
    delay = retry_delays[failures_before] * (1 + jitter)
    return NextStep(DeliveryStatus.PENDING, now + timedelta(seconds=max(0.0, delay)))


def failing_endpoint(consecutive_failures: int, limit: int) -> DisabledReason | None:
    """An endpoint is disabled once `limit` of its attempts failed in a row."""
    return DisabledReason.FAILING if consecutive_failures >= limit else None


@dataclass(frozen=True)
class FailureCount:
    """How a run of attempts changes an endpoint's count of failures in a row."""

    restart: bool
    """A success among them: the count starts again, from `added`."""
    added: int
    """The failures after the last success (all of them, without one)."""


def failure_counts(attempts: Iterable[tuple[UUID, bool]]) -> dict[UUID, FailureCount]:
    """By endpoint, from attempts' `(endpoint, succeeded)` in the order they ended."""
    counts: dict[UUID, FailureCount] = {}
    for endpoint, succeeded in attempts:
        before = counts.get(endpoint, FailureCount(restart=False, added=0))
        counts[endpoint] = (
            FailureCount(restart=True, added=0)
            if succeeded
            else FailureCount(before.restart, before.added + 1)
        )
    return counts
