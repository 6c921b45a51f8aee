"""The operational HTTP endpoints of every service: /healthz, /readyz, Prometheus /metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

# A readiness check returns when its dependency is usable and raises (with the reason) when not.
ReadinessCheck = Callable[[], Awaitable[None]]
READINESS_CHECK_TIMEOUT_SECONDS = 2.0


class HealthState:
    """Whether the service still accepts work; flipped off as soon as shutdown begins."""

    def __init__(self, checks: Mapping[str, ReadinessCheck]) -> None:
        self.checks = dict(checks)
        self.accepting = True

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        if not self.accepting:
            return False, {"service": "shutting down"}
        names = list(self.checks)
        outcomes = await asyncio.gather(
            *(
                asyncio.wait_for(self.checks[name](), READINESS_CHECK_TIMEOUT_SECONDS)
                for name in names
            ),
            return_exceptions=True,
        )
        report = {
            name: "ok" if outcome is None else f"{type(outcome).__name__}: {outcome}"
            for name, outcome in zip(names, outcomes, strict=True)
        }
        return all(outcome is None for outcome in outcomes), report


def health_routes(state: HealthState) -> list[Route]:
    async def healthz(_: Request) -> Response:
        # Answering at all shows the event loop is alive; that is what liveness means here.
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        ready, report = await state.readiness()
        return JSONResponse(
            {"status": "ready" if ready else "not_ready", "checks": report},
            status_code=200 if ready else 503,
        )

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
