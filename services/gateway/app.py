"""The gateway's FastAPI application: the `/v1` routers, the activation page, the error format."""

from __future__ import annotations

from fastapi import FastAPI

from ckrv.services.gateway.context import GatewayContext
from ckrv.services.gateway.errors import install_error_handlers
from ckrv.services.gateway.identity import activation
from ckrv.services.gateway.identity import routes as identity
from ckrv.services.gateway.identity.upstream import install_upstream_sessions
from ckrv.services.gateway.routes import (
    artifacts,
    credentials,
    events,
    jobs,
    logs,
    users,
    webhooks,
)
from ckrv.services.gateway.settings import GatewaySettings

API_PREFIX = "/v1"


def create_app(
    context: GatewayContext | None = None, settings: GatewaySettings | None = None
) -> FastAPI:
    """The app; `context` may be attached later (the OpenAPI export needs none).

    `settings` (or the context's) decide the middleware, which cannot be added later.
    """
    app = FastAPI(
        title="Chakravarti Cloud API",
        version="1.0.0",
        description="Run ckrv coding-agent jobs on Chakravarti Cloud.",
    )
    app.state.context = context
    install_error_handlers(app)
    for router in (
        jobs.router,
        logs.router,
        logs.doubled_prefix_router,
        artifacts.router,
        credentials.router,
        webhooks.router,
        events.router,
        users.router,
        identity.router,
    ):
        app.include_router(router, prefix=API_PREFIX)
    app.include_router(identity.well_known)
    app.include_router(activation.router)
    settings = settings or (context.settings if context is not None else None)
    if settings is not None and settings.oidc_enabled:
        install_upstream_sessions(app, settings)
    return app
