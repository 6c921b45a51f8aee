"""The gateway's FastAPI application: the `/v1` routers and the error format."""

from __future__ import annotations

from fastapi import FastAPI

from ckrv.services.gateway.context import GatewayContext
from ckrv.services.gateway.errors import install_error_handlers
from ckrv.services.gateway.identity import routes as identity
from ckrv.services.gateway.routes import jobs, users

API_PREFIX = "/v1"


def create_app(context: GatewayContext | None = None) -> FastAPI:
    """The app; `context` may be attached later (the OpenAPI export needs none)."""
    app = FastAPI(
        title="Chakravarti Cloud API",
        version="1.0.0",
        description="Run ckrv coding-agent jobs on Chakravarti Cloud.",
    )
    app.state.context = context
    install_error_handlers(app)
    for router in (jobs.router, users.router, identity.router):
        app.include_router(router, prefix=API_PREFIX)
    app.include_router(identity.well_known)
    return app
