"""Many requests at once: none waits on another's database connection."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.integration.gateway.conftest import ClientFactory
from tests.integration.gateway.jobs import job_body

pytestmark = pytest.mark.integration

# More than the gateway's database pool (10, and 10 more on overflow) can hold at once.
SENDERS = 40


def test_forty_users_submitting_at_once_are_all_served_promptly(
    client_for: ClientFactory,
) -> None:
    clients = [client_for("enterprise") for _ in range(SENDERS)]
    together = threading.Barrier(SENDERS)

    def submit(client: httpx.Client) -> tuple[int, float]:
        together.wait()
        started = time.perf_counter()
        response = client.post("/jobs", json=job_body())
        return response.status_code, time.perf_counter() - started

    with ThreadPoolExecutor(SENDERS) as pool:
        answers = list(pool.map(submit, clients))

    assert [status for status, _ in answers] == [201] * SENDERS
    # Requests that each held a connection while waiting for a second one stalled until
    # the pool's 30 s timeout; served one after the other they take well under a second.
    assert max(seconds for _, seconds in answers) < 5, answers
