"""What an attempt's outcome means: success, a retry on schedule, failure, a disabled endpoint."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from ckrv.schemas.webhooks import DeliveryStatus, DisabledReason
from ckrv.services.notifier.policy import (
    AttemptOutcome,
    FailureCount,
    NextStep,
    after_attempt,
    failing_endpoint,
    failure_counts,
)
from ckrv.services.notifier.settings import STANDARD_RETRY_DELAYS, NotifierSettings

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def step(outcome: AttemptOutcome, failures_before: int = 0, jitter: float = 0.0) -> NextStep:
    return after_attempt(
        outcome,
        failures_before=failures_before,
        now=NOW,
        retry_delays=STANDARD_RETRY_DELAYS,
        jitter=jitter,
    )


@pytest.mark.parametrize("status_code", [200, 201, 202, 204, 299])
@pytest.mark.parametrize("failures_before", [0, 3, 8])
def test_any_2xx_succeeds(status_code: int, failures_before: int) -> None:
    result = step(AttemptOutcome(status_code, 12.0), failures_before, jitter=0.5)
    assert result == NextStep(DeliveryStatus.SUCCEEDED, None)


@pytest.mark.parametrize(
    "outcome",
    [
        AttemptOutcome(500, 3.0, "HTTP 500"),
        AttemptOutcome(404, 3.0, "HTTP 404"),
        AttemptOutcome(301, 3.0, "HTTP 301"),
        AttemptOutcome(199, 3.0, "HTTP 199"),
        AttemptOutcome(None, 10_000.0, "no answer within 10 s"),
        AttemptOutcome(None, 1.0, "not sent: 10.0.0.1 is not a public address"),
    ],
)
def test_every_other_outcome_is_retried_on_the_standard_schedule(outcome: AttemptOutcome) -> None:
    expected = [0, 5, 300, 1800, 7200, 18000, 36000, 36000]
    for failures_before, seconds in enumerate(expected):
        result = step(outcome, failures_before)
        assert result.status is DeliveryStatus.PENDING
        assert result.next_attempt_at == NOW + timedelta(seconds=seconds)
        assert result.disable_endpoint is None
    exhausted = step(outcome, len(expected))
    assert (exhausted.status, exhausted.next_attempt_at) == (DeliveryStatus.FAILED, None)


def test_jitter_stretches_or_shortens_the_delay_by_its_fraction() -> None:
    late = after_attempt(
        AttemptOutcome(500, 1.0), failures_before=2, now=NOW, retry_delays=(0, 5, 300), jitter=0.1
    )
    early = after_attempt(
        AttemptOutcome(500, 1.0), failures_before=2, now=NOW, retry_delays=(0, 5, 300), jitter=-0.1
    )
    assert late.next_attempt_at == NOW + timedelta(seconds=330)
    assert early.next_attempt_at == NOW + timedelta(seconds=270)


def test_gone_fails_the_delivery_and_disables_the_endpoint() -> None:
    result = step(AttemptOutcome(410, 2.0, "HTTP 410 Gone"))
    assert result == NextStep(DeliveryStatus.FAILED, None, DisabledReason.GONE)


def test_an_endpoint_fails_after_its_limit_of_failures_in_a_row() -> None:
    assert failing_endpoint(19, 20) is None
    assert failing_endpoint(20, 20) is DisabledReason.FAILING
    assert failing_endpoint(21, 20) is DisabledReason.FAILING


def test_settings_default_to_the_standard_schedule_and_leave_room_beside_an_endpoint() -> None:
    settings = NotifierSettings(env="dev")
    assert settings.retry_delays_seconds == STANDARD_RETRY_DELAYS
    assert (settings.attempt_timeout_seconds, settings.disable_after_failures) == (10.0, 20)
    assert not settings.cloud
    assert NotifierSettings(env="production").cloud
    with pytest.raises(ValueError, match="MAX_IN_FLIGHT must be more than"):
        NotifierSettings(env="dev", max_in_flight=4, endpoint_concurrency=4)
    with pytest.raises(ValueError, match="RETRY_DELAYS_SECONDS needs one or more delays"):
        NotifierSettings(env="dev", retry_delays_seconds=(1.0, -1.0))


def test_failures_in_a_row_count_from_the_last_success_of_each_endpoint() -> None:
    slow, flaky, down = uuid4(), uuid4(), uuid4()
    attempts = [
        (flaky, False),
        (slow, True),
        (down, False),
        (flaky, True),
        (flaky, False),
        (down, False),
        (flaky, False),
    ]
    assert failure_counts(attempts) == {
        slow: FailureCount(restart=True, added=0),
        flaky: FailureCount(restart=True, added=2),
        down: FailureCount(restart=False, added=2),
    }
    assert failure_counts([]) == {}
