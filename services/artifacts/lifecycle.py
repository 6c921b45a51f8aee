"""The bucket's lifecycle rule on `jobs/`: storage deletes results on its own, as a backstop.

The janitor (`janitor.py`) is what expires results on time and records it. The
rule catches what the janitor would miss (an object stored after its job
expired, a janitor that is down for days): storage counts from an object's
creation, not from its job's end, so the rule waits a day longer than the longest
retention, past any job's time limit.
"""

from __future__ import annotations

from minio import Minio
from minio.commonconfig import ENABLED, Filter
from minio.lifecycleconfig import Expiration, LifecycleConfig, Rule

from ckrv.services.common.tiers import TIERS

RESULTS_PREFIX = "jobs/"
RULE_ID = "ckrv-expire-job-results"
MARGIN_DAYS = 1


def backstop_days() -> int:
    """Days after its creation that storage deletes a result object by itself."""
    return max(limits.result_retention_days for limits in TIERS.values()) + MARGIN_DAYS


def ensure_results_lifecycle(storage: Minio, bucket: str) -> None:
    """Put the expiry rule on `bucket`, keeping any other rule the bucket has.

    SeaweedFS takes the rule (and reads it back) since it supports `Expiration.Days`
    with a prefix filter.
    """
    current = storage.get_bucket_lifecycle(bucket)
    others = [rule for rule in (current.rules if current else []) if rule.rule_id != RULE_ID]
    ours = Rule(
        ENABLED,
        rule_filter=Filter(prefix=RESULTS_PREFIX),
        rule_id=RULE_ID,
        expiration=Expiration(days=backstop_days()),
    )
    storage.set_bucket_lifecycle(bucket, LifecycleConfig([*others, ours]))
