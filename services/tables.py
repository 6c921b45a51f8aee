"""Every table of the service in one place, so creating the schema sees them all."""

from __future__ import annotations

from sqlmodel import SQLModel

from ckrv.services.artifacts import retention as artifact_retention
from ckrv.services.common import credentials, inbox
from ckrv.services.dispatcher import admission
from ckrv.services.gateway import tables as gateway_tables
from ckrv.services.gateway.identity import tables as identity_tables
from ckrv.services.gateway.identity import throttle as identity_throttle
from ckrv.services.log_relay import leases as log_relay_leases
from ckrv.services.log_relay import positions as log_relay_positions
from ckrv.services.notifier import tables as notifier_tables

TABLE_MODULES = (
    credentials,
    inbox,
    admission,
    gateway_tables,
    identity_tables,
    identity_throttle,
    log_relay_positions,
    log_relay_leases,
    artifact_retention,
    notifier_tables,
)
METADATA = SQLModel.metadata
