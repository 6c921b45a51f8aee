"""The log-relay as a service (`ckrv-cloud serve log-relay`): its connections and lifecycle."""

from __future__ import annotations

from ckrv.services.common.event_service import Connections, Work
from ckrv.services.log_relay.relay import LogRelay
from ckrv.services.log_relay.settings import LogRelaySettings
from ckrv.services.runners.settings import RunnerSettings


async def log_relay_work(
    connections: Connections, settings: LogRelaySettings, runner_settings: RunnerSettings
) -> Work:
    return LogRelay(
        common=connections.common,
        settings=settings,
        nc=connections.nats,
        sessions=connections.sessions,
        runner=await connections.runner(runner_settings),
    )
