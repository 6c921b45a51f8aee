"""Reading Kubernetes' answers back: pod log lines resumed after a break, and Job conditions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

from kubernetes_asyncio.client import (
    V1Container,
    V1ContainerState,
    V1ContainerStateRunning,
    V1ContainerStateTerminated,
    V1ContainerStateWaiting,
    V1ContainerStatus,
    V1Job,
    V1JobCondition,
    V1JobStatus,
    V1ObjectMeta,
    V1Pod,
    V1PodSpec,
    V1PodStatus,
)

from ckrv.services.runners.base import FailureReason, WorkloadState
from ckrv.services.runners.kubernetes_objects import (
    ATTEMPT_LABEL,
    JOB_ID_LABEL,
    describe,
    pod_end_unseen,
)
from ckrv.services.runners.kubernetes_output import (
    LogCursor,
    TimestampedLines,
    since_time,
    timestamp_nanoseconds,
)
from tests.kubelet import log_time

SECOND = 1_000_000_000
START = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def test_log_timestamps_are_read_to_the_nanosecond() -> None:
    base = timestamp_nanoseconds(b"2026-05-01T12:00:00Z")
    assert base == int(START.timestamp()) * SECOND
    assert timestamp_nanoseconds(b"2026-05-01T12:00:00.5Z") == base + SECOND // 2
    assert timestamp_nanoseconds(b"2026-05-01T12:00:00.000000007Z") == base + 7
    assert since_time(base + SECOND + 999) == "2026-05-01T12:00:01Z"


def test_a_resumed_stream_gives_each_line_once_even_when_timestamps_repeat() -> None:
    base = int(START.timestamp()) * SECOND
    log = [(base + 1, b"a\n"), (base + 1, b"b\n"), (base + 2, b"c\n"), (base + SECOND, b"d")]
    served = b"".join(
        f"{log_time(stamp)} ".encode() + line.rstrip(b"\n") + b"\n" for stamp, line in log
    )
    cursor = LogCursor()
    taken = []
    # The first stream breaks after the second line.
    for stamp, content in TimestampedLines().feed(served[: served.index(b"c\n")]):
        if cursor.take(stamp, content):
            taken.append(content)
    assert cursor.since_time() == "2026-05-01T12:00:00Z"
    cursor.restart()
    for stamp, content in TimestampedLines().feed(served):  # from the same second on
        if cursor.take(stamp, content):
            taken.append(content)
    assert taken == [b"a\n", b"b\n", b"c\n", b"d\n"]
    assert cursor.position == 8


def test_a_last_line_without_newline_counts_only_once_the_stream_is_whole() -> None:
    lines = TimestampedLines()
    assert list(lines.feed(b"2026-05-01T12:00:00Z one\n2026-05-01T12:00:00Z tw")) == [
        (int(START.timestamp()) * SECOND, b"one\n")
    ]
    assert list(lines.feed(b"o")) == []
    assert [content for _, content in lines.rest()] == [b"two"]


def job(*conditions: V1JobCondition) -> V1Job:
    return V1Job(
        metadata=V1ObjectMeta(
            name="ckrv-job-x-1",
            labels={JOB_ID_LABEL: str(uuid4()), ATTEMPT_LABEL: "1"},
            creation_timestamp=START,
        ),
        status=V1JobStatus(start_time=START, conditions=list(conditions)),
    )


def failed(reason: str) -> V1JobCondition:
    return V1JobCondition(
        type="Failed",
        status="True",
        reason=reason,
        last_transition_time=START + timedelta(seconds=9),
    )


def pod(state: V1ContainerState, *, phase: str = "Failed", reason: str | None = None) -> V1Pod:
    return V1Pod(
        metadata=V1ObjectMeta(name="ckrv-job-x-1-abcde", creation_timestamp=START),
        spec=V1PodSpec(containers=[V1Container(name="worker", image="worker:1")]),
        status=V1PodStatus(
            phase=phase,
            reason=reason,
            container_statuses=[
                V1ContainerStatus(
                    name="worker",
                    image="worker:1",
                    image_id="",
                    ready=False,
                    restart_count=0,
                    state=state,
                )
            ],
        ),
    )


def exited(code: int, reason: str = "Error") -> V1ContainerState:
    return V1ContainerState(
        terminated=V1ContainerStateTerminated(
            exit_code=code,
            reason=reason,
            started_at=START,
            finished_at=START + timedelta(seconds=5),
        )
    )


def status_of(job: V1Job, pod: V1Pod | None, limit: float = 60) -> tuple[object, ...]:
    status = describe(
        job, pod, now=START + timedelta(seconds=30), image_pull_limit=timedelta(seconds=limit)
    )
    assert status is not None
    return status.state, status.reason, status.exit_code


def test_the_job_decides_whether_it_ended_and_the_pod_tells_how() -> None:
    running_out = pod(exited(1), phase="Failed")
    assert status_of(job(), running_out)[0] is WorkloadState.RUNNING  # the Job has not noticed
    assert status_of(job(failed("BackoffLimitExceeded")), running_out) == (
        WorkloadState.FAILED,
        FailureReason.ERROR,
        1,
    )
    assert status_of(job(failed("BackoffLimitExceeded")), pod(exited(137, "OOMKilled"))) == (
        WorkloadState.FAILED,
        FailureReason.OOM_KILLED,
        137,
    )
    assert status_of(job(failed("BackoffLimitExceeded")), pod(exited(137), reason="Evicted"))[
        1
    ] is (FailureReason.EVICTED)
    # The deadline's pods are deleted: the Job's condition alone says why.
    assert status_of(job(failed("DeadlineExceeded")), None) == (
        WorkloadState.FAILED,
        FailureReason.DEADLINE_EXCEEDED,
        None,
    )
    assert status_of(job(failed("BackoffLimitExceeded")), None)[1] is FailureReason.LOST


def test_a_job_failed_on_a_pod_still_seen_running_waits_for_the_pods_news() -> None:
    backoff = job(failed("BackoffLimitExceeded"))
    still_running = pod(
        V1ContainerState(running=V1ContainerStateRunning(started_at=START)), phase="Running"
    )
    assert pod_end_unseen(backoff, still_running)
    assert pod_end_unseen(backoff, pod(V1ContainerState(), phase="Pending"))
    # What the watch of pods brings next tells how it ended.
    assert not pod_end_unseen(backoff, pod(exited(1)))
    assert not pod_end_unseen(backoff, pod(exited(137), reason="Evicted"))
    # A pod gone, or going, may never report an end; nor does one past the deadline.
    assert not pod_end_unseen(backoff, None)
    still_running.metadata.deletion_timestamp = START + timedelta(seconds=8)
    assert not pod_end_unseen(backoff, still_running)
    assert not pod_end_unseen(
        job(failed("DeadlineExceeded")), pod(V1ContainerState(), phase="Running")
    )
    # A Job still running, or complete, waits for nothing.
    assert not pod_end_unseen(job(), pod(V1ContainerState(), phase="Running"))
    complete = V1JobCondition(type="Complete", status="True")
    assert not pod_end_unseen(job(complete), pod(V1ContainerState(), phase="Running"))


def test_an_image_failing_to_pull_fails_the_workload_once_past_the_limit() -> None:
    waiting = V1ContainerState(waiting=V1ContainerStateWaiting(reason="ImagePullBackOff"))
    pulling = pod(waiting, phase="Pending")
    assert status_of(job(), pulling, limit=60)[0] is WorkloadState.PENDING
    assert status_of(job(), pulling, limit=10)[:2] == (
        WorkloadState.FAILED,
        FailureReason.IMAGE_PULL_BACK_OFF,
    )
