"""Log-relay settings (`CKRV_LOG_RELAY_*`)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from ckrv.events.streams import DUPLICATE_WINDOW_SECONDS
from ckrv.services.common.settings import ServiceSettings


class LogRelaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CKRV_LOG_RELAY_")

    max_line_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        description="Longest line of output taken as one line; a longer one is cut into lines "
        "of this size (each line is then split into entries of at most 16,384 characters).",
    )
    publish_timeout_seconds: float = Field(
        default=5.0, gt=0, description="How long a log entry's publish may wait for its ack."
    )
    retry_delay_seconds: float = Field(
        default=2.0,
        gt=0,
        description="After a failure (NATS, the database or S3 unreachable), how long before "
        "following that workload again from its last saved position.",
    )
    lease_ttl_seconds: float = Field(
        default=15.0,
        gt=0,
        # A replica taking a job over republishes what the last holder published after its
        # last saved position, at most about one lease later: JetStream drops those copies as
        # long as they come within its duplicate window of the first ones, and this bound
        # keeps the lease far shorter than the window (2 hours).
        le=DUPLICATE_WINDOW_SECONDS / 8,
        description="How long a replica's lease of a job lasts unless renewed (each replica "
        "renews its leases every third of this): when a replica dies, the others take its "
        "jobs over once its leases ran out, going on from its saved positions.",
    )
    claim_interval_seconds: float = Field(
        default=2.0,
        gt=0,
        description="How often a replica looks for jobs no replica follows (those of a replica "
        "that stopped or died) and takes on its share of them; it also does when a workload "
        "appears.",
    )
