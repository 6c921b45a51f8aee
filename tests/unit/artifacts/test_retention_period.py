"""How long results are kept: the tier's days after the job's end, unless overridden."""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

import pytest

from ckrv.schemas.api import SubscriptionTier
from ckrv.services.artifacts.lifecycle import backstop_days
from ckrv.services.artifacts.retention import job_results_prefix, retention_period
from ckrv.services.artifacts.settings import ArtifactsSettings
from ckrv.services.common.tiers import TIERS


@pytest.mark.parametrize("tier", list(SubscriptionTier))
def test_every_tier_keeps_results_seven_days(tier: SubscriptionTier) -> None:
    assert retention_period(tier.value) == timedelta(days=7)


def test_an_override_shortens_every_tiers_retention() -> None:
    assert retention_period("enterprise", 1.5) == timedelta(seconds=1.5)


def test_the_override_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CKRV_ARTIFACTS_RETENTION_SECONDS_OVERRIDE", "2.5")
    assert ArtifactsSettings().retention_seconds_override == 2.5
    monkeypatch.setenv("CKRV_ARTIFACTS_RETENTION_SECONDS_OVERRIDE", "0")
    with pytest.raises(ValueError, match="greater than 0"):
        ArtifactsSettings()


def test_the_bucket_rule_waits_longer_than_any_tier() -> None:
    assert all(backstop_days() > limits.result_retention_days for limits in TIERS.values())


def test_a_jobs_prefix_holds_all_its_attempts_and_no_other_jobs() -> None:
    job_id = UUID("0192f4a1-7c3e-7b2a-9d41-5e6f7a8b9c0d")
    prefix = job_results_prefix(job_id)
    assert f"jobs/{job_id}/2/repo.bundle".startswith(prefix)
    assert not f"jobs/{job_id}0/1/repo.bundle".startswith(prefix)
