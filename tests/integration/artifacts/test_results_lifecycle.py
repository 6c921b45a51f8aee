"""The bucket's expiry rule on `jobs/`, as SeaweedFS takes it: set, kept beside others, once."""

from __future__ import annotations

from collections.abc import Iterator
from uuid import uuid4

import pytest
from minio.commonconfig import ENABLED, Filter
from minio.lifecycleconfig import Expiration, LifecycleConfig, Rule

from ckrv.services.artifacts.lifecycle import RULE_ID, backstop_days, ensure_results_lifecycle
from ckrv.services.stack.seaweed_server import SeaweedServer

pytestmark = pytest.mark.integration


@pytest.fixture
def bucket(s3_server: SeaweedServer) -> Iterator[str]:
    """A bucket of the test's own: lifecycle rules belong to the whole bucket."""
    name = f"lifecycle-{uuid4().hex[:12]}"
    s3_server.client().make_bucket(bucket_name=name)
    yield name
    s3_server.client().remove_bucket(bucket_name=name)


def test_the_rule_is_put_once_beside_the_buckets_other_rules(
    s3_server: SeaweedServer, bucket: str
) -> None:
    client = s3_server.client()
    scratch = Rule(
        ENABLED,
        rule_filter=Filter(prefix="scratch/"),
        rule_id="scratch",
        expiration=Expiration(days=1),
    )
    client.set_bucket_lifecycle(bucket, LifecycleConfig([scratch]))
    ensure_results_lifecycle(client, bucket)
    ensure_results_lifecycle(client, bucket)  # every start of the stack puts it again
    config = client.get_bucket_lifecycle(bucket)
    assert config is not None
    rules = {rule.rule_id: rule for rule in config.rules}
    assert set(rules) == {RULE_ID, "scratch"}
    ours = rules[RULE_ID]
    assert ours.rule_filter is not None
    assert ours.rule_filter.prefix == "jobs/"
    assert ours.expiration is not None
    assert ours.expiration.days == backstop_days()


def test_a_bucket_without_rules_gets_the_rule(s3_server: SeaweedServer, bucket: str) -> None:
    ensure_results_lifecycle(s3_server.client(), bucket)
    config = s3_server.client().get_bucket_lifecycle(bucket)
    assert config is not None
    assert [rule.rule_id for rule in config.rules] == [RULE_ID]
