"""/healthz, /readyz and /metrics as every service serves them."""

from __future__ import annotations

import httpx
from starlette.applications import Starlette

from ckrv.events import consumer as _consumer_metrics  # noqa: F401 - registers its metrics
from ckrv.services.common.http import HealthState, health_routes


async def ok() -> None:
    return None


async def refuses() -> None:
    raise ConnectionError("connection refused")


def client(state: HealthState) -> httpx.AsyncClient:
    app = Starlette(routes=health_routes(state))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://service")


async def test_ready_when_every_check_passes() -> None:
    async with client(HealthState({"nats": ok, "database": ok})) as http:
        response = await http.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"nats": "ok", "database": "ok"}}


async def test_not_ready_names_the_failing_dependency_but_stays_alive() -> None:
    async with client(HealthState({"nats": ok, "database": refuses})) as http:
        ready = await http.get("/readyz")
        alive = await http.get("/healthz")
    assert ready.status_code == 503
    assert ready.json()["checks"] == {
        "nats": "ok",
        "database": "ConnectionError: connection refused",
    }
    assert alive.status_code == 200


async def test_not_ready_once_shutdown_begins() -> None:
    state = HealthState({"nats": ok})
    state.accepting = False
    async with client(state) as http:
        response = await http.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"] == {"service": "shutting down"}


async def test_metrics_are_in_the_prometheus_text_format() -> None:
    async with client(HealthState({})) as http:
        response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "# TYPE ckrv_consumer_messages_total counter" in response.text
