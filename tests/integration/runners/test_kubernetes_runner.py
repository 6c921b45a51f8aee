"""What the Kubernetes runner does that the shared contract does not show: the Job and Secret it
writes, 409 and 410 answers, Kubernetes' failure reasons, log streams resumed after a cut, and a
job stopped before its pod started."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ckrv.events.catalog import RunnerBackend
from ckrv.services.runners.backends import open_runner
from ckrv.services.runners.base import (
    INPUT_DIR_ENV,
    WORKSPACE_DIR_ENV,
    FailureReason,
    OutputChunk,
    RunnerError,
    WorkloadState,
    WorkloadStatus,
)
from ckrv.services.runners.kubernetes import KubernetesRunner
from ckrv.services.runners.settings import RunnerSettings
from tests.kubelet import JOBS, SECRETS, SimulatedCluster, cluster
from tests.runner_contract import Gate, finished, python_request, running, wait_for_status

pytestmark = pytest.mark.integration
__all__ = ["cluster"]


@pytest.fixture
async def runner(cluster: SimulatedCluster) -> AsyncIterator[KubernetesRunner]:
    async with cluster.runner() as fresh:
        yield fresh
        for status in await fresh.list():
            await fresh.delete(status.name)


def only_pod(cluster: SimulatedCluster, runner: KubernetesRunner, name: str) -> str:
    (pod,) = cluster.pods_of(runner.namespace, name)
    pod_name: str = pod["metadata"]["name"]
    return pod_name


async def test_the_job_and_its_secret_are_locked_down_and_owned(
    cluster: SimulatedCluster,
) -> None:
    async with cluster.runner(
        kubernetes_image="registry.test/ckrv-worker:7",
        kubernetes_image_pull_policy="Always",
        kubernetes_ttl_seconds_after_finished=600,
        kubernetes_run_as_user=4242,
    ) as runner:
        request = python_request(
            "pass",
            input_files={"spec.md": b"# Spec\n", "credential": b"s3cret"},
            env={"GREETING": "hello"},
            labels={"team": "search"},
            time_limit_seconds=900,
            grace_seconds=2.5,
            memory_limit_bytes=512 * 1024**2,
            cpu_limit=1.5,
        )
        await runner.create(request)
        namespace = runner.namespace
        job = cluster.emulator.find(JOBS, namespace, request.name)
        secret = cluster.emulator.find(SECRETS, namespace, request.name)
        await runner.delete(request.name)
    assert job is not None
    assert secret is not None
    labels = {"team": "search", "ckrv.dev/job-id": str(request.job_id), "ckrv.dev/attempt": "1"}
    assert job["metadata"]["labels"] == labels
    assert job["metadata"]["namespace"] == namespace
    spec = job["spec"]
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"]) == (0, 900)
    assert spec["ttlSecondsAfterFinished"] == 600
    template = spec["template"]
    assert template["metadata"]["labels"] == labels
    pod = template["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["serviceAccountName"] == "ckrv-orchestrator"
    assert pod["automountServiceAccountToken"] is False
    assert pod["terminationGracePeriodSeconds"] == 3
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 4242,
        "runAsGroup": 4242,
        "fsGroup": 4242,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    (container,) = pod["containers"]
    assert container["image"] == "registry.test/ckrv-worker:7"
    assert container["imagePullPolicy"] == "Always"
    assert container["command"] == list(request.command)
    assert container["securityContext"] == {
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    amounts = {"memory": str(512 * 1024**2), "cpu": "1500m"}
    assert container["resources"] == {"requests": amounts, "limits": amounts}
    env = {item["name"]: item["value"] for item in container["env"]}
    mounts = {mount["name"]: mount for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert env["GREETING"] == "hello"
    assert mounts["input"]["mountPath"] == env[INPUT_DIR_ENV]
    assert mounts["input"]["readOnly"] is True
    assert volumes["input"]["secret"] == {"secretName": request.name, "defaultMode": 0o400}
    assert mounts["workspace"]["mountPath"] == env[WORKSPACE_DIR_ENV] == container["workingDir"]
    assert volumes["workspace"] == {"name": "workspace", "emptyDir": {}}
    assert volumes["tmp"] == {"name": "tmp", "emptyDir": {}}

    assert secret["metadata"]["labels"] == labels
    assert secret["immutable"] is True
    assert {name: base64.b64decode(value) for name, value in secret["data"].items()} == {
        "spec.md": b"# Spec\n",
        "credential": b"s3cret",
    }
    assert secret["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "name": request.name,
            "uid": job["metadata"]["uid"],
        }
    ]


async def test_the_secret_goes_with_its_job(
    cluster: SimulatedCluster, runner: KubernetesRunner
) -> None:
    request = python_request("pass", input_files={"credential": b"s3cret"})
    await runner.create(request)
    await finished(runner, request.name)

    await runner.delete(request.name)

    assert cluster.emulator.find(JOBS, runner.namespace, request.name) is None
    assert cluster.emulator.find(SECRETS, runner.namespace, request.name) is None
    (deletion,) = cluster.requests(
        "DELETE", f"/apis/batch/v1/namespaces/{runner.namespace}/jobs/{request.name}"
    )
    assert deletion.data["propagationPolicy"] == "Foreground"


async def test_an_existing_job_answering_409_is_the_workload(
    cluster: SimulatedCluster, runner: KubernetesRunner
) -> None:
    async with Gate() as gate:
        request = python_request(gate.wait_code())
        first = await runner.create(request)
        await gate.arrival()
        second = await runner.create(request)
        await gate.open()
    assert (first.created, second.created) == (True, False)
    assert second.status.state is WorkloadState.RUNNING
    creations = cluster.requests("POST", f"/apis/batch/v1/namespaces/{runner.namespace}/jobs")
    assert len(creations) == 2
    assert len(cluster.pods_of(runner.namespace, request.name)) == 1


async def record_statuses(
    runner: KubernetesRunner, statuses: list[WorkloadStatus], changed: asyncio.Event
) -> None:
    async for status in runner.watch():
        statuses.append(status)
        changed.set()


async def until_seen(
    statuses: list[WorkloadStatus], changed: asyncio.Event, name: str, state: WorkloadState
) -> None:
    async with asyncio.timeout(30):
        while not any(s.name == name and s.state is state for s in statuses):
            changed.clear()
            await changed.wait()


@pytest.mark.parametrize("expired", [True, False], ids=["410-gone", "dropped"])
async def test_a_broken_watch_goes_on_without_repeating_or_missing_a_status(
    cluster: SimulatedCluster, runner: KubernetesRunner, expired: bool
) -> None:
    statuses: list[WorkloadStatus] = []
    changed = asyncio.Event()
    watcher = asyncio.create_task(record_statuses(runner, statuses, changed))
    try:
        async with Gate() as gate:
            waiting = python_request(gate.wait_code())
            done = python_request("pass")
            await runner.create(waiting)
            await until_seen(statuses, changed, waiting.name, WorkloadState.RUNNING)

            if expired:
                await cluster.emulator.expire_watches()
            else:
                await cluster.emulator.drop_watches()
            await runner.create(done)
            await gate.open()
            await until_seen(statuses, changed, waiting.name, WorkloadState.SUCCEEDED)
            await until_seen(statuses, changed, done.name, WorkloadState.SUCCEEDED)
            await runner.delete(done.name)
            await until_seen(statuses, changed, done.name, WorkloadState.GONE)
    finally:
        watcher.cancel()
    for name in (waiting.name, done.name):
        seen = [status for status in statuses if status.name == name]
        assert len(seen) == len(set(seen)), seen
    assert [s.state for s in statuses if s.name == done.name][-2:] == [
        WorkloadState.SUCCEEDED,
        WorkloadState.GONE,
    ]
    listings = cluster.requests("GET", f"/apis/batch/v1/namespaces/{runner.namespace}/jobs")
    lists = [request for request in listings if "watch" not in request.params]
    watches = [request for request in listings if "watch" in request.params]
    # A dropped watch goes on from the last version it saw; a forgotten version needs a new list.
    assert len(lists) == (2 if expired else 1)
    assert watches[-1].params["resourceVersion"] != watches[0].params["resourceVersion"]


async def running_pod(
    cluster: SimulatedCluster, runner: KubernetesRunner, gate: Gate, request: Any
) -> str:
    await runner.create(request)
    await gate.arrival()
    await running(runner, request.name)
    return only_pod(cluster, runner, request.name)


async def test_an_oom_kill_is_reported_as_such(
    cluster: SimulatedCluster, runner: KubernetesRunner
) -> None:
    async with Gate() as gate:
        request = python_request(gate.wait_code())
        pod = await running_pod(cluster, runner, gate, request)
        cluster.kubelet.oom_kill(runner.namespace, pod)
        status = await finished(runner, request.name)
    assert status.state is WorkloadState.FAILED
    assert (status.reason, status.exit_code) == (FailureReason.OOM_KILLED, 137)


async def test_an_eviction_is_reported_as_such(
    cluster: SimulatedCluster, runner: KubernetesRunner
) -> None:
    async with Gate() as gate:
        request = python_request(gate.wait_code())
        pod = await running_pod(cluster, runner, gate, request)
        cluster.kubelet.evict(runner.namespace, pod)
        status = await finished(runner, request.name)
    assert status.state is WorkloadState.FAILED
    assert status.reason is FailureReason.EVICTED
    assert status.message is not None
    assert "low on resource" in status.message


async def test_a_program_that_cannot_start_is_a_start_error(runner: KubernetesRunner) -> None:
    request = python_request("pass").model_copy(update={"command": ("/nonexistent/ckrv-worker",)})
    await runner.create(request)
    status = await finished(runner, request.name)
    assert status.state is WorkloadState.FAILED
    assert status.reason is FailureReason.START_ERROR


async def test_an_image_that_cannot_be_pulled_fails_the_workload_past_the_limit(
    cluster: SimulatedCluster,
) -> None:
    image = "registry.test/missing:1"
    cluster.kubelet.unpullable_images.add(image)
    request = python_request("pass")
    async with (
        cluster.runner(kubernetes_image=image, kubernetes_image_pull_limit_seconds=3600) as patient,
        cluster.runner(
            kubernetes_image=image,
            kubernetes_image_pull_limit_seconds=0,
            kubernetes_namespace=patient.namespace,
        ) as impatient,
    ):
        await patient.create(request)

        def pulling(_: WorkloadStatus | None) -> bool:
            reason = cluster.waiting_reason(patient.namespace, request.name)
            return reason == "ImagePullBackOff"

        await wait_for_status(patient, request.name, pulling)
        still = await patient.get(request.name)
        failed = await impatient.get(request.name)
        await impatient.stop(request.name, grace_seconds=1)
        gone = await impatient.get(request.name)
    assert still is not None
    assert still.state is WorkloadState.PENDING
    assert failed is not None
    assert failed.state is WorkloadState.FAILED
    assert failed.reason is FailureReason.IMAGE_PULL_BACK_OFF
    assert failed.message is not None
    assert image in failed.message
    assert gone is None


async def test_a_followed_output_resumes_after_a_cut_without_repeating_lines(
    cluster: SimulatedCluster, runner: KubernetesRunner
) -> None:
    before = b"".join(f"before {number}\n".encode() for number in range(200))
    after = b"".join(f"after {number}\n".encode() for number in range(200))
    async with Gate() as gate:
        code = (
            "import sys\n"
            "for number in range(200): print(f'before {number}')\n"
            "sys.stdout.flush()\n"
            f"{gate.wait_code()}"
            "for number in range(200): print(f'after {number}')\n"
            "print('no newline at the end', end='')\n"
        )
        request = python_request(code)
        await runner.create(request)
        chunks: list[OutputChunk] = []
        received = asyncio.Event()

        async def follow() -> None:
            async for chunk in runner.read_output(request.name, follow=True):
                chunks.append(chunk)
                received.set()

        follower = asyncio.create_task(follow())
        await gate.arrival()
        async with asyncio.timeout(30):
            while sum(len(chunk.data) for chunk in chunks) < len(before):
                received.clear()
                await received.wait()
        await cluster.kubelet.cut_log_streams()
        await gate.open()
        async with asyncio.timeout(30):
            await follower
    output = b"".join(chunk.data for chunk in chunks)
    assert output == before + after + b"no newline at the end"
    assert [chunk.offset for chunk in chunks] == [
        sum(len(chunk.data) for chunk in chunks[:index]) for index in range(len(chunks))
    ]
    reads = list(cluster.kubelet.log_requests)
    assert reads[0].params["follow"] == "true"
    assert "sinceTime" not in reads[0].params
    assert all("sinceTime" in read.params for read in reads[1:])
    assert len(reads) >= 2


async def test_a_job_stopped_while_pending_never_starts(
    cluster: SimulatedCluster, runner: KubernetesRunner
) -> None:
    cluster.kubelet.hold()
    try:
        async with Gate() as gate:
            request = python_request(gate.wait_code())
            await runner.create(request)
            async with asyncio.timeout(30):
                await cluster.emulator.until(
                    lambda: bool(cluster.pods_of(runner.namespace, request.name))
                )
            pod = only_pod(cluster, runner, request.name)
            pending = await runner.get(request.name)
            assert pending is not None
            assert pending.state is WorkloadState.PENDING

            await runner.stop(request.name, grace_seconds=1)

            assert await runner.get(request.name) is None
            assert cluster.pods_of(runner.namespace, request.name) == []
            cluster.kubelet.release()
            await cluster.kubelet.idle()
            assert pod not in cluster.kubelet.started
            assert gate.arrivals == 0
    finally:
        cluster.kubelet.release()


def test_the_settings_choose_the_kubernetes_runner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    monkeypatch.setenv("CKRV_RUNNER_BACKEND", "kubernetes")
    monkeypatch.setenv("CKRV_RUNNER_KUBERNETES_KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("CKRV_RUNNER_KUBERNETES_NAMESPACE", "jobs")
    monkeypatch.setenv("CKRV_RUNNER_KUBERNETES_IMAGE", "registry.test/worker:2")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    runner = open_runner(RunnerSettings())
    assert isinstance(runner, KubernetesRunner)
    assert runner.backend is RunnerBackend.KUBERNETES
    assert (runner.namespace, runner.template.image) == ("jobs", "registry.test/worker:2")

    monkeypatch.setenv("CKRV_RUNNER_KUBERNETES_KUBECONFIG", str(tmp_path / "missing"))
    with pytest.raises(RunnerError, match="not a file"):
        open_runner(RunnerSettings())
    monkeypatch.delenv("CKRV_RUNNER_KUBERNETES_KUBECONFIG")
    with pytest.raises(RunnerError, match="inside a cluster"):
        open_runner(RunnerSettings())
