"""Which workloads give up their inputs when a job ends: every attempt's, and only then."""

from __future__ import annotations

import pytest

from ckrv.events.catalog import workload_name
from ckrv.events.state import TERMINAL_STATUSES, JobStatus
from ckrv.services.watcher.input_release import workloads_to_release
from tests.unit.events.job_builders import JOB_ID, job_in


@pytest.mark.parametrize("status", sorted(TERMINAL_STATUSES))
def test_an_ended_job_releases_the_workload_of_each_attempt(status: JobStatus) -> None:
    assert workloads_to_release(job_in(status, attempt=3)) == [
        workload_name(JOB_ID, 1),
        workload_name(JOB_ID, 2),
        workload_name(JOB_ID, 3),
    ]


@pytest.mark.parametrize("status", sorted(set(JobStatus) - TERMINAL_STATUSES))
def test_a_job_that_has_not_ended_releases_nothing(status: JobStatus) -> None:
    assert workloads_to_release(job_in(status)) == []


def test_a_job_cancelled_before_it_was_queued_had_no_workload() -> None:
    assert workloads_to_release(job_in(JobStatus.CANCELLED, attempt=0)) == []
