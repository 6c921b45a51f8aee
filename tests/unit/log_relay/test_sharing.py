"""How many jobs a relay replica takes on, and how long its leases may last."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ckrv.events.streams import DUPLICATE_WINDOW_SECONDS
from ckrv.services.log_relay.leases import fair_share, new_replica_name
from ckrv.services.log_relay.settings import LogRelaySettings


@pytest.mark.parametrize(
    ("jobs", "replicas", "share"),
    [(0, 1, 0), (10, 1, 10), (10, 2, 5), (11, 2, 6), (1, 3, 1), (200, 3, 67)],
)
def test_a_fair_share_leaves_no_job_without_a_replica(jobs: int, replicas: int, share: int) -> None:
    assert fair_share(jobs, replicas) == share
    assert share * replicas >= jobs


def test_replica_names_differ_between_replicas_of_one_process() -> None:
    assert new_replica_name() != new_replica_name()


def test_a_lease_may_not_outlast_the_duplicate_window() -> None:
    # Lines the last holder published after its saved position are published again by the
    # next one, a lease later; JetStream drops them only within its duplicate window.
    with pytest.raises(ValidationError, match="lease_ttl_seconds"):
        LogRelaySettings(lease_ttl_seconds=DUPLICATE_WINDOW_SECONDS)
    assert LogRelaySettings().lease_ttl_seconds < DUPLICATE_WINDOW_SECONDS
