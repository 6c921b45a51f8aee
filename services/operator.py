"""`ckrv-cloud`: the operator's command (local stack, one service, schema and streams)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Literal, NoReturn, TypeVar

import cyclopts
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from ckrv.schemas.api import SubscriptionTier
from ckrv.services.common.logging import configure_logging
from ckrv.services.common.service import Service, serve_process
from ckrv.services.common.settings import CommonSettings, ServiceSettings
from ckrv.services.stack.cli import up

if TYPE_CHECKING:
    from ckrv.services.common.event_service import Connections, Work

app = cyclopts.App(name="ckrv-cloud", help="Operate Chakravarti Cloud: local stack and services.")
app.command(up)

ServiceName = Literal["gateway", "dispatcher", "watcher", "log-relay", "artifacts", "notifier"]
T = TypeVar("T")


def _gateway(common: CommonSettings) -> tuple[Service, ServiceSettings]:
    from ckrv.services.gateway.service import GatewayService
    from ckrv.services.gateway.settings import GatewaySettings

    settings = GatewaySettings()
    return GatewayService(common, settings), settings


def _event_service(
    name: str,
    common: CommonSettings,
    settings: ServiceSettings,
    work: Callable[[Connections], Awaitable[Work]],
) -> tuple[Service, ServiceSettings]:
    """A service that follows the job events, with the work `work` builds."""
    from ckrv.services.common.event_service import EventService

    return EventService(name, common, work), settings


def _dispatcher(common: CommonSettings) -> tuple[Service, ServiceSettings]:
    from ckrv.services.dispatcher.service import dispatcher_work
    from ckrv.services.dispatcher.settings import DispatcherSettings
    from ckrv.services.runners.settings import RunnerSettings

    settings, runner = DispatcherSettings(), RunnerSettings()
    return _event_service(
        "dispatcher",
        common,
        settings,
        lambda connections: dispatcher_work(connections, settings, runner),
    )


def _watcher(common: CommonSettings) -> tuple[Service, ServiceSettings]:
    from ckrv.services.runners.settings import RunnerSettings
    from ckrv.services.watcher.service import watcher_work
    from ckrv.services.watcher.settings import WatcherSettings

    settings, runner = WatcherSettings(), RunnerSettings()
    return _event_service(
        "watcher", common, settings, lambda connections: watcher_work(connections, settings, runner)
    )


def _log_relay(common: CommonSettings) -> tuple[Service, ServiceSettings]:
    from ckrv.services.log_relay.service import log_relay_work
    from ckrv.services.log_relay.settings import LogRelaySettings
    from ckrv.services.runners.settings import RunnerSettings

    settings, runner = LogRelaySettings(), RunnerSettings()
    return _event_service(
        "log-relay",
        common,
        settings,
        lambda connections: log_relay_work(connections, settings, runner),
    )


def _artifacts(common: CommonSettings) -> tuple[Service, ServiceSettings]:
    from ckrv.services.artifacts.service import artifacts_work
    from ckrv.services.artifacts.settings import ArtifactsSettings

    settings = ArtifactsSettings()
    return _event_service(
        "artifacts", common, settings, lambda connections: artifacts_work(connections, settings)
    )


def _notifier(common: CommonSettings) -> tuple[Service, ServiceSettings]:
    from ckrv.services.notifier.service import notifier_work
    from ckrv.services.notifier.settings import NotifierSettings

    settings = NotifierSettings()
    return _event_service(
        "notifier", common, settings, lambda connections: notifier_work(connections, settings)
    )


# Every runnable service, by the name `serve` takes; the local stack starts each of them.
SERVICES: dict[str, Callable[[CommonSettings], tuple[Service, ServiceSettings]]] = {
    "gateway": _gateway,
    "dispatcher": _dispatcher,
    "watcher": _watcher,
    "log-relay": _log_relay,
    "artifacts": _artifacts,
    "notifier": _notifier,
}


@app.command
def serve(name: ServiceName, /) -> None:
    """Run one service until SIGTERM or Ctrl-C.

    Parameters
    ----------
    name
        Which service to run.
    """
    common = CommonSettings()
    configure_logging(name, level=common.log_level, fmt=common.log_format)
    service, settings = SERVICES[name](common)
    sys.exit(serve_process(service, settings))


@app.command
def migrate() -> None:
    """Create the database tables that do not exist yet."""
    from ckrv.services.common.db import create_schema

    common = CommonSettings()
    asyncio.run(create_schema(common.database_url.get_secret_value()))
    print("database schema is up to date")


@app.command
def provision() -> None:
    """Create or update the JetStream streams and the results bucket's expiry rule."""
    from ckrv.events.streams import provision_streams
    from ckrv.services.artifacts.lifecycle import backstop_days, ensure_results_lifecycle
    from ckrv.services.common.connections import connect_nats
    from ckrv.services.common.storage import storage_client

    common = CommonSettings()

    async def provision_all() -> None:
        nc = await connect_nats(common.nats_url, name="ckrv-cloud")
        try:
            outcomes = await provision_streams(nc.jetstream(), replicas=common.stream_replicas)
            for stream, outcome in outcomes.items():
                print(f"{stream}: {outcome}")
        finally:
            await nc.close()

    asyncio.run(provision_all())
    ensure_results_lifecycle(storage_client(common), common.s3_bucket)
    print(f"{common.s3_bucket}: objects under jobs/ expire {backstop_days()} days after upload")


projections = cyclopts.App(name="projections", help="Maintain the read models folded from JOBS.")
app.command(projections)


@projections.command
def rebuild() -> None:
    """Refold the jobs read model from the first event on JOBS."""
    from ckrv.services.common.connections import connect_nats
    from ckrv.services.common.db import session_factory, temporary_engine
    from ckrv.services.gateway.projection import rebuild_projection

    async def rebuild_all() -> int:
        common = CommonSettings()
        nc = await connect_nats(common.nats_url, name="ckrv-cloud")
        try:
            async with (
                temporary_engine(common.database_url.get_secret_value()) as engine,
                session_factory(engine)() as session,
                session.begin(),
            ):
                return await rebuild_projection(session, nc)
        finally:
            await nc.close()

    print(f"rebuilt {asyncio.run(rebuild_all())} jobs from JOBS")


users = cyclopts.App(name="users", help="Manage accounts: create users, change tiers.")
app.command(users)


def _run_in_database(action: Callable[[AsyncSession], Awaitable[T]]) -> T:
    from ckrv.services.common.db import session_factory, temporary_engine

    async def run() -> T:
        async with (
            temporary_engine(CommonSettings().database_url.get_secret_value()) as engine,
            session_factory(engine)() as session,
            session.begin(),
        ):
            return await action(session)

    return asyncio.run(run())


def _fail(message: str) -> NoReturn:
    print(f"ckrv-cloud: {message}", file=sys.stderr)
    sys.exit(1)


@users.command(name="create")
def create_user_command(
    *, email: str, tier: SubscriptionTier = SubscriptionTier.FREE, token: bool = False
) -> None:
    """Create a user account.

    Parameters
    ----------
    email
        The user's email address (their identity).
    tier
        Subscription tier.
    token
        Also create an API token (for `CKRV_TOKEN`) and print it; it is shown only once.
    """
    from ckrv.services.gateway.identity.administration import AccountError, create_user

    try:
        user, api_token = _run_in_database(
            lambda session: create_user(session, email, tier, with_token=token)
        )
    except AccountError as error:
        _fail(str(error))
    print(f"created user {user.email} ({user.id}), {tier} tier")
    if api_token is not None:
        print(f"API token (shown once; use as CKRV_TOKEN): {api_token}")


@users.command(name="set-tier")
def set_tier_command(*, email: str, tier: SubscriptionTier) -> None:
    """Change a user's subscription tier.

    Parameters
    ----------
    email
        The user's email address.
    tier
        The new tier.
    """
    from ckrv.services.gateway.identity.administration import AccountError, set_tier

    try:
        _run_in_database(lambda session: set_tier(session, email, tier))
    except AccountError as error:
        _fail(str(error))
    print(f"{email} is now on the {tier} tier")


def main() -> None:
    try:
        app()
    except ValidationError as error:
        # Settings come from the environment; say which variable is wrong, not a traceback.
        messages = "; ".join(str(detail["msg"]) for detail in error.errors())
        print(f"ckrv-cloud: invalid settings: {messages}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
