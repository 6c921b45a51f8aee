"""What the `kubernetes` runner writes to the cluster and how it reads a workload back from it.

Pure functions over kubernetes-asyncio's models, no API calls: the Job and Secret
for a `WorkloadRequest` (`job_manifest`, `secret_manifest`), and a Job with its
Pod turned into a `WorkloadStatus` (`describe`).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from uuid import UUID

from kubernetes_asyncio.client import (
    V1Capabilities,
    V1Container,
    V1ContainerState,
    V1EmptyDirVolumeSource,
    V1EnvVar,
    V1Job,
    V1JobSpec,
    V1ObjectMeta,
    V1OwnerReference,
    V1Pod,
    V1PodSecurityContext,
    V1PodSpec,
    V1PodTemplateSpec,
    V1ResourceRequirements,
    V1SeccompProfile,
    V1Secret,
    V1SecretVolumeSource,
    V1SecurityContext,
    V1Volume,
    V1VolumeMount,
)

from ckrv.services.runners.base import (
    INPUT_DIR_ENV,
    WORKSPACE_DIR_ENV,
    FailureReason,
    WorkloadRequest,
    WorkloadState,
    WorkloadStatus,
)

JOB_ID_LABEL = "ckrv.dev/job-id"
ATTEMPT_LABEL = "ckrv.dev/attempt"
JOB_NAME_LABEL = "job-name"
"""Set by the Job controller on the Job's pods."""
CONTAINER_NAME = "worker"
INPUT_MOUNT_PATH = "/var/run/ckrv/input"
WORKSPACE_MOUNT_PATH = "/workspace"
# The root filesystem is read-only: programs that write temporary files need a folder.
TMP_MOUNT_PATH = "/tmp"  # noqa: S108 - an emptyDir of the pod's own, not the host's /tmp
# Owner read only; Kubernetes adds group read for the pod's fsGroup, nobody else reads.
INPUT_FILE_MODE = 0o400
_IMAGE_PULL_FAILURES = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName"})
_POD_FAILURES = {
    "Evicted": FailureReason.EVICTED,
    "DeadlineExceeded": FailureReason.DEADLINE_EXCEEDED,
}
_CONTAINER_FAILURES = {
    "OOMKilled": FailureReason.OOM_KILLED,
    "StartError": FailureReason.START_ERROR,
    "ContainerCannotRun": FailureReason.START_ERROR,
}


@dataclass(frozen=True)
class JobTemplate:
    """The settings every workload's Job shares."""

    namespace: str
    image: str
    image_pull_policy: str
    service_account: str
    run_as_user: int
    ttl_seconds_after_finished: int


def workload_labels(request: WorkloadRequest) -> dict[str, str]:
    """The request's labels, then the runner's own (which win)."""
    return {
        **request.labels,
        JOB_ID_LABEL: str(request.job_id),
        ATTEMPT_LABEL: str(request.attempt),
    }


def grace_seconds(seconds: float) -> int:
    """A grace period in Kubernetes' whole seconds: rounded up, and at least one, since zero
    would force the pod's deletion before its processes are known to have ended."""
    return max(1, math.ceil(seconds))


def secret_manifest(request: WorkloadRequest, namespace: str) -> V1Secret:
    """The Secret holding the request's input files; its owner is set once the Job exists."""
    return V1Secret(
        api_version="v1",
        kind="Secret",
        metadata=V1ObjectMeta(
            name=request.name, namespace=namespace, labels=workload_labels(request)
        ),
        type="Opaque",
        immutable=True,
        data={
            name: base64.b64encode(content).decode("ascii")
            for name, content in request.input_files.items()
        },
    )


def owner_reference(job: V1Job) -> V1OwnerReference:
    """A reference making `job` the owner of another object, so that it goes with the Job."""
    return V1OwnerReference(
        api_version="batch/v1", kind="Job", name=job.metadata.name, uid=job.metadata.uid
    )


def job_manifest(request: WorkloadRequest, template: JobTemplate) -> V1Job:
    """The batch/v1 Job running one attempt: once, within its time limit, locked down."""
    labels = workload_labels(request)
    environment = {
        "HOME": WORKSPACE_MOUNT_PATH,
        **request.env,
        INPUT_DIR_ENV: INPUT_MOUNT_PATH,
        WORKSPACE_DIR_ENV: WORKSPACE_MOUNT_PATH,
    }
    container = V1Container(
        name=CONTAINER_NAME,
        image=template.image,
        image_pull_policy=template.image_pull_policy,
        command=list(request.command),
        env=[V1EnvVar(name=name, value=value) for name, value in environment.items()],
        working_dir=WORKSPACE_MOUNT_PATH,
        resources=_resources(request),
        security_context=V1SecurityContext(
            run_as_non_root=True,
            read_only_root_filesystem=True,
            allow_privilege_escalation=False,
            privileged=False,
            capabilities=V1Capabilities(drop=["ALL"]),
            seccomp_profile=V1SeccompProfile(type="RuntimeDefault"),
        ),
        volume_mounts=[
            V1VolumeMount(name="input", mount_path=INPUT_MOUNT_PATH, read_only=True),
            V1VolumeMount(name="workspace", mount_path=WORKSPACE_MOUNT_PATH),
            V1VolumeMount(name="tmp", mount_path=TMP_MOUNT_PATH),
        ],
    )
    pod = V1PodSpec(
        restart_policy="Never",
        service_account_name=template.service_account,
        automount_service_account_token=False,
        enable_service_links=False,
        termination_grace_period_seconds=grace_seconds(request.grace_seconds),
        security_context=V1PodSecurityContext(
            run_as_non_root=True,
            run_as_user=template.run_as_user,
            run_as_group=template.run_as_user,
            fs_group=template.run_as_user,
            seccomp_profile=V1SeccompProfile(type="RuntimeDefault"),
        ),
        containers=[container],
        volumes=[
            V1Volume(
                name="input",
                secret=V1SecretVolumeSource(secret_name=request.name, default_mode=INPUT_FILE_MODE),
            ),
            V1Volume(name="workspace", empty_dir=V1EmptyDirVolumeSource()),
            V1Volume(name="tmp", empty_dir=V1EmptyDirVolumeSource()),
        ],
    )
    return V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=V1ObjectMeta(name=request.name, namespace=template.namespace, labels=labels),
        spec=V1JobSpec(
            backoff_limit=0,
            active_deadline_seconds=request.time_limit_seconds,
            ttl_seconds_after_finished=template.ttl_seconds_after_finished,
            template=V1PodTemplateSpec(metadata=V1ObjectMeta(labels=labels), spec=pod),
        ),
    )


def _resources(request: WorkloadRequest) -> V1ResourceRequirements:
    # Requests equal to limits: the pod gets what it may use (Guaranteed when both are set).
    amounts: dict[str, str] = {}
    if request.memory_limit_bytes is not None:
        amounts["memory"] = str(request.memory_limit_bytes)
    if request.cpu_limit is not None:
        amounts["cpu"] = f"{math.ceil(request.cpu_limit * 1000)}m"
    return V1ResourceRequirements(requests=dict(amounts), limits=dict(amounts))


# --- reading a workload back ---------------------------------------------------------------


def workload_identity(job: V1Job) -> tuple[UUID, int] | None:
    """The job id and attempt a Job's labels name; None for a Job that is not a workload."""
    labels: Mapping[str, str] = job.metadata.labels or {}
    try:
        return UUID(labels[JOB_ID_LABEL]), int(labels[ATTEMPT_LABEL])
    except (KeyError, ValueError):
        return None


def job_has_ended(job: V1Job) -> bool:
    """Whether the Job controller recorded the end (condition Complete or Failed)."""
    return _ended_condition(job) is not None


def pod_end_unseen(job: V1Job, pod: V1Pod | None) -> bool:
    """Whether the Job failed on its pod's end while the pod, as last seen, has not ended.

    Kubernetes records a pod's end before the Job's, but a watch of Jobs and a watch of
    pods each deliver on their own: news of the Job may come first, the pod's is on its
    way. (A deadline fails the Job first, and a pod being deleted may never report an end.)
    """
    ended = _ended_condition(job)
    if ended is None or ended.type != "Failed" or ended.reason == "DeadlineExceeded":
        return False
    if pod is None or pod.metadata.deletion_timestamp is not None:
        return False
    if pod.status is not None and pod.status.phase in ("Succeeded", "Failed"):
        return False
    state = container_state(pod)
    return state is None or state.terminated is None


def latest_pod(pods: Iterable[V1Pod]) -> V1Pod | None:
    """The pod that speaks for a Job: its newest."""
    return max(pods, key=lambda pod: _utc(pod.metadata.creation_timestamp), default=None)


def image_pull_deadline(pod: V1Pod | None, limit: timedelta) -> datetime | None:
    """When a pod failing to pull its image fails its workload; None if it is not failing."""
    if pod is None or _waiting_reason(pod) not in _IMAGE_PULL_FAILURES:
        return None
    return _utc(pod.metadata.creation_timestamp) + limit


def describe(
    job: V1Job, pod: V1Pod | None, *, now: datetime, image_pull_limit: timedelta
) -> WorkloadStatus | None:
    """The workload a Job (and its newest pod, if any) stands for; None if it is not one.

    The Job's conditions decide whether it ended, the pod tells how: its container's
    exit code and times, OOMKilled, Evicted, a program that could not start. A pod that
    has ended while its Job has not yet noticed still counts as running, so that a status
    never goes from finished back to anything else.
    """
    identity = workload_identity(job)
    if identity is None:
        return None
    job_id, attempt = identity
    container = container_state(pod)
    started_at = _utc(container.running.started_at) if container and container.running else None
    terminated = container.terminated if container else None
    if terminated is not None:
        started_at = _utc(terminated.started_at)
    status = WorkloadStatus(
        name=job.metadata.name,
        job_id=job_id,
        attempt=attempt,
        state=WorkloadState.PENDING,
        created_at=_utc(job.metadata.creation_timestamp),
        started_at=started_at,
    )
    ended = _ended_condition(job)
    if ended is not None:
        return _ended(status, job, pod, ended)
    if pod is None or pod.status is None or pod.status.phase in (None, "Pending"):
        return _pending(status, pod, now=now, image_pull_limit=image_pull_limit)
    return replace(status, state=WorkloadState.RUNNING, started_at=started_at or _job_start(job))


def _pending(
    status: WorkloadStatus, pod: V1Pod | None, *, now: datetime, image_pull_limit: timedelta
) -> WorkloadStatus:
    deadline = image_pull_deadline(pod, image_pull_limit)
    if pod is None or deadline is None or now < deadline:
        return status
    container = pod.spec.containers[0]
    return replace(
        status,
        state=WorkloadState.FAILED,
        finished_at=deadline,
        reason=FailureReason.IMAGE_PULL_BACK_OFF,
        message=f"the image {container.image} could not be pulled within "
        f"{image_pull_limit.total_seconds():g} s ({_waiting_reason(pod)})",
    )


def _ended(
    status: WorkloadStatus, job: V1Job, pod: V1Pod | None, ended: _Condition
) -> WorkloadStatus:
    state = container_state(pod)
    terminated = state.terminated if state else None
    finished_at = _utc(terminated.finished_at) if terminated else ended.time
    started_at = status.started_at or _job_start(job)
    exit_code = terminated.exit_code if terminated else None
    if ended.type == "Complete":
        return replace(
            status,
            state=WorkloadState.SUCCEEDED,
            started_at=started_at,
            finished_at=finished_at,
            exit_code=exit_code if exit_code is not None else 0,
        )
    reason, message = _failure(ended, pod)
    return replace(
        status,
        state=WorkloadState.FAILED,
        started_at=started_at,
        finished_at=finished_at,
        exit_code=exit_code,
        reason=reason,
        message=message,
    )


def _failure(ended: _Condition, pod: V1Pod | None) -> tuple[FailureReason, str | None]:
    if ended.reason == "DeadlineExceeded":
        return FailureReason.DEADLINE_EXCEEDED, ended.message
    pod_status = pod.status if pod else None
    if pod_status is not None and pod_status.reason in _POD_FAILURES:
        return _POD_FAILURES[pod_status.reason], pod_status.message
    state = container_state(pod)
    terminated = state.terminated if state else None
    if terminated is None:
        # Its pod vanished, or ended, without an end of its own (a node lost, a pod deleted).
        return FailureReason.LOST, ended.message
    reason = _CONTAINER_FAILURES.get(terminated.reason or "", FailureReason.ERROR)
    return reason, terminated.message


@dataclass(frozen=True)
class _Condition:
    type: str
    reason: str | None
    message: str | None
    time: datetime | None


def _ended_condition(job: V1Job) -> _Condition | None:
    for condition in (job.status.conditions if job.status else None) or ():
        if condition.type in ("Complete", "Failed") and condition.status == "True":
            return _Condition(
                type=condition.type,
                reason=condition.reason,
                message=condition.message,
                time=_utc(condition.last_transition_time)
                if condition.last_transition_time
                else None,
            )
    return None


def container_state(pod: V1Pod | None) -> V1ContainerState | None:
    """The state of the pod's worker container, once the kubelet has reported one."""
    if pod is None or pod.status is None:
        return None
    for container in pod.status.container_statuses or ():
        if container.name == CONTAINER_NAME:
            state: V1ContainerState | None = container.state
            return state
    return None


def _waiting_reason(pod: V1Pod) -> str | None:
    state = container_state(pod)
    return state.waiting.reason if state and state.waiting else None


def _job_start(job: V1Job) -> datetime | None:
    start = job.status.start_time if job.status else None
    return _utc(start) if start else None


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)
