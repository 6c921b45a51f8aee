"""The `kubernetes` runner: each workload a batch/v1 Job with a Secret of input files.

`create` writes the Secret, then the Job (`kubernetes_objects.job_manifest`), then
makes the Job the Secret's owner so that the Secret goes when the Job goes, unless
`release_input` deleted it first, when the job ended. The Job controller makes one
pod; its container runs the command. Everything else reads the cluster: statuses
from the Job and its newest pod, output from the pod's log, changes from a
list-then-watch of Jobs and pods. Stopping and deleting both delete the Job with
foreground propagation: Kubernetes removes its pods (SIGTERM, then SIGKILL after
the grace period) before the Job itself, and a pod not started yet never starts.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import logging
import os
import re
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Coroutine,
    Iterable,
    Iterator,
)
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import aiohttp
from kubernetes_asyncio.client import (
    ApiClient,
    BatchV1Api,
    Configuration,
    CoreV1Api,
    V1DeleteOptions,
    V1Job,
    V1Pod,
)
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config import load_incluster_config, load_kube_config
from kubernetes_asyncio.config.incluster_config import SERVICE_HOST_ENV_NAME
from kubernetes_asyncio.watch import Watch

from ckrv.events.catalog import WORKLOAD_NAME_PATTERN, RunnerBackend
from ckrv.services.runners.base import (
    OutputChunk,
    Runner,
    RunnerError,
    Workload,
    WorkloadNotFound,
    WorkloadRequest,
    WorkloadState,
    WorkloadStatus,
)
from ckrv.services.runners.kubernetes_objects import (
    CONTAINER_NAME,
    JOB_ID_LABEL,
    JOB_NAME_LABEL,
    JobTemplate,
    container_state,
    describe,
    grace_seconds,
    image_pull_deadline,
    job_has_ended,
    job_manifest,
    latest_pod,
    owner_reference,
    pod_end_unseen,
    secret_manifest,
)
from ckrv.services.runners.kubernetes_output import LogCursor, TimestampedLines
from ckrv.services.runners.settings import RunnerSettings

logger = logging.getLogger(__name__)

# The API server ends each watch after this long; the runner then watches on from where
# it was, which also notices a connection that died without a word.
WATCH_SECONDS = 300
# How long `stop` waits, beyond the grace period, for Kubernetes to remove the Job.
STOP_MARGIN_SECONDS = 30.0
RETRY_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)
OUTPUT_READ_BYTES = 64 * 1024
_WORKLOAD_NAME = re.compile(WORKLOAD_NAME_PATTERN)
# Answers worth trying again: the server busy, restarting, or briefly unreachable.
_TRANSIENT_STATUSES = frozenset({0, 429, 500, 502, 503, 504})
_BREAKS = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)


class KubernetesRunner(Runner):
    """Workloads as Jobs in one namespace of a Kubernetes cluster.

    The API client is made on first use, in the event loop that uses it, from
    `configure` (a kubeconfig file or the pod's service account).
    """

    backend = RunnerBackend.KUBERNETES

    def __init__(
        self,
        configure: Callable[[], Awaitable[Configuration]],
        template: JobTemplate,
        *,
        image_pull_limit: timedelta = timedelta(minutes=5),
        poll_interval_seconds: float = 0.5,
    ) -> None:
        self.template = template
        self.namespace = template.namespace
        self.image_pull_limit = image_pull_limit
        self.poll_interval_seconds = poll_interval_seconds
        self._configure = configure
        self._client: ApiClient | None = None
        self._client_made = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: RunnerSettings) -> KubernetesRunner:
        """A runner for the cluster the settings name; refuses at once if none is reachable."""
        kubeconfig, context = settings.kubernetes_kubeconfig, settings.kubernetes_context
        if kubeconfig is None and SERVICE_HOST_ENV_NAME not in os.environ:
            raise RunnerError(
                "the kubernetes runner needs a kubeconfig file "
                "(CKRV_RUNNER_KUBERNETES_KUBECONFIG) or to run inside a cluster"
            )
        if kubeconfig is not None and not kubeconfig.is_file():
            raise RunnerError(f"the kubernetes runner's kubeconfig {kubeconfig} is not a file")

        async def configure() -> Configuration:
            configuration = Configuration()
            if kubeconfig is None:
                load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            else:
                await load_kube_config(
                    config_file=str(kubeconfig),
                    context=context,
                    client_configuration=configuration,
                    persist_config=False,
                )
            configuration.connection_pool_maxsize = settings.kubernetes_max_connections
            return configuration

        return cls(
            configure,
            JobTemplate(
                namespace=settings.kubernetes_namespace,
                image=settings.kubernetes_image,
                image_pull_policy=settings.kubernetes_image_pull_policy.value,
                service_account=settings.kubernetes_service_account,
                run_as_user=settings.kubernetes_run_as_user,
                ttl_seconds_after_finished=settings.kubernetes_ttl_seconds_after_finished,
            ),
            image_pull_limit=timedelta(seconds=settings.kubernetes_image_pull_limit_seconds),
            poll_interval_seconds=settings.kubernetes_poll_interval_seconds,
        )

    async def _api_client(self) -> ApiClient:
        async with self._client_made:
            if self._client is None:
                try:
                    configuration = await self._configure()
                except Exception as error:
                    raise RunnerError(f"cannot reach the Kubernetes API: {error}") from error
                self._client = ApiClient(configuration)
            return self._client

    async def _batch(self) -> BatchV1Api:
        return BatchV1Api(await self._api_client())

    async def _core(self) -> CoreV1Api:
        return CoreV1Api(await self._api_client())

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    # --- creating ----------------------------------------------------------------------------

    async def create(self, request: WorkloadRequest) -> Workload:
        batch, core = await self._batch(), await self._core()
        secret_created = await self._create_secret(request)
        try:
            job = await batch.create_namespaced_job(
                self.namespace, job_manifest(request, self.template)
            )
            created, pods = True, []
        except ApiException as error:
            if error.status != 409:
                if secret_created:  # leave nothing half-made behind
                    with _absent_is_fine():
                        await core.delete_namespaced_secret(request.name, self.namespace)
                raise _runner_error(f"could not create the Job {request.name}", error) from error
            found = await self._job(request.name)
            if found is None:
                raise RunnerError(
                    f"workload {request.name} was deleted while being created"
                ) from error
            job, created, pods = found, False, await self._pods(request.name)
        # Also after a 409: the creator that won may have died before this step.
        with _absent_is_fine():
            await core.patch_namespaced_secret(
                request.name,
                self.namespace,
                {"metadata": {"ownerReferences": [owner_reference(job)]}},
            )
        status = self._describe(job, pods)
        if status is None:
            raise RunnerError(f"the Job {request.name} lacks the labels of a workload")
        return Workload(status=status, created=created)

    async def _create_secret(self, request: WorkloadRequest) -> bool:
        """Write the input files' Secret; False if it was there already."""
        try:
            await (await self._core()).create_namespaced_secret(
                self.namespace, secret_manifest(request, self.namespace)
            )
        except ApiException as error:
            if error.status == 409:
                return False
            raise _runner_error(f"could not create the Secret {request.name}", error) from error
        return True

    # --- observing ---------------------------------------------------------------------------

    def _describe(self, job: V1Job, pods: builtins.list[V1Pod]) -> WorkloadStatus | None:
        return describe(
            job,
            latest_pod(pods),
            now=datetime.now(UTC),
            image_pull_limit=self.image_pull_limit,
        )

    async def _job(self, name: str) -> V1Job | None:
        if not _WORKLOAD_NAME.match(name):
            return None
        try:
            return await (await self._batch()).read_namespaced_job(name, self.namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise _runner_error(f"could not read the Job {name}", error) from error

    async def _pods(self, name: str) -> builtins.list[V1Pod]:
        listing = await (await self._core()).list_namespaced_pod(
            self.namespace, label_selector=f"{JOB_NAME_LABEL}={name}"
        )
        return list(listing.items)

    async def get(self, name: str) -> WorkloadStatus | None:
        job = await self._job(name)
        if job is None:
            return None
        return self._describe(job, await self._pods(name))

    async def list(self) -> builtins.list[WorkloadStatus]:
        jobs = await (await self._batch()).list_namespaced_job(
            self.namespace, label_selector=JOB_ID_LABEL
        )
        pods = await (await self._core()).list_namespaced_pod(
            self.namespace, label_selector=JOB_ID_LABEL
        )
        view = _ClusterView(self.image_pull_limit)
        view.replace("jobs", jobs.items)
        view.replace("pods", pods.items)
        statuses = (self._view_status(view, name) for name in sorted(view.jobs))
        return [status for status in statuses if status is not None]

    def _view_status(self, view: _ClusterView, name: str) -> WorkloadStatus | None:
        job = view.jobs.get(name)
        return None if job is None else self._describe(job, view.pods_of(name))

    async def watch(self) -> AsyncIterator[WorkloadStatus]:
        feed: asyncio.Queue[_Observation] = asyncio.Queue()
        followers = [
            asyncio.create_task(_reporting_failures(self._follow(kind, feed), feed))
            for kind in _KINDS
        ]
        try:
            view = _ClusterView(self.image_pull_limit)
            listed: set[str] = set()
            reported: dict[str, WorkloadStatus] = {}
            while True:
                observation = await _next_observation(feed, view.next_review())
                affected = view.apply(observation)
                if isinstance(observation, _Listing):
                    listed.add(observation.kind)
                if listed != set(_KINDS):
                    continue  # the first statuses come with both listings
                for name in sorted(affected):
                    if view.pod_end_unseen(name):
                        continue  # how it ended comes with the pod's news
                    status = self._view_status(view, name)
                    if status is None:
                        last = reported.pop(name, None)
                        if last is not None:
                            yield replace(last, state=WorkloadState.GONE)
                    elif reported.get(name) != status:
                        reported[name] = status
                        yield status
        finally:
            for follower in followers:
                follower.cancel()
            await asyncio.gather(*followers, return_exceptions=True)

    async def _follow(self, kind: _Kind, feed: asyncio.Queue[_Observation]) -> None:
        """List, then watch from the list's version; again from the last version seen when a
        watch ends, and from a new list when the server has forgotten that version (410)."""
        api: Any = await self._batch() if kind == "jobs" else await self._core()
        list_function = api.list_namespaced_job if kind == "jobs" else api.list_namespaced_pod
        version: str | None = None
        failures = 0
        while True:
            try:
                if version is None:
                    listing = await list_function(self.namespace, label_selector=JOB_ID_LABEL)
                    version = listing.metadata.resource_version
                    await feed.put(_Listing(kind, listing.items))
                async with Watch() as watch:
                    stream = watch.stream(
                        list_function,
                        self.namespace,
                        label_selector=JOB_ID_LABEL,
                        resource_version=version,
                        timeout_seconds=WATCH_SECONDS,
                        allow_watch_bookmarks=True,
                    )
                    async for event in stream:
                        version = watch.resource_version or version
                        if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                            await feed.put(_Change(kind, event["type"], event["object"]))
                        failures = 0
            except ApiException as error:
                if error.status == 410:
                    logger.info("the %s watch expired; listing them again", kind)
                    version = None
                    continue
                if error.status not in _TRANSIENT_STATUSES:
                    await feed.put(_Failure(_runner_error(f"cannot watch {kind}", error)))
                    return
                failures += 1
                await _pause(failures)
            except _BREAKS:
                logger.info("the %s watch broke; watching again", kind, exc_info=True)
                failures += 1
                await _pause(failures)

    # --- output ------------------------------------------------------------------------------

    async def read_output(
        self, name: str, offset: int = 0, *, follow: bool = False
    ) -> AsyncIterator[OutputChunk]:
        if offset < 0:
            raise ValueError(f"offset must not be negative, not {offset}")
        cursor = _OutputCursor(LogCursor())
        source = await self._output_source(name, wait=follow)
        if source is None:
            raise WorkloadNotFound(name)
        while source.pod is not None:
            following = follow and not source.ended
            async for chunk in self._read_log(source.pod, cursor, offset, follow=following):
                yield chunk
            if not following and cursor.complete:
                return
            # The stream broke, or ended as the container did: look again, then go on
            # from where it stopped (to the end only, if the container has ended).
            source = await self._output_source(name, wait=follow)
            if source is None:
                return
            if follow and not source.ended:
                await asyncio.sleep(self.poll_interval_seconds)

    async def _output_source(self, name: str, *, wait: bool) -> _OutputSource | None:
        """The pod whose log holds the workload's output, once its container has started;
        with no pod if it never will (or not `wait`); None if there is no such workload."""
        seen = False
        while True:
            job = await self._job(name)
            if job is None:
                return _OutputSource(None, ended=True) if seen else None
            seen = True
            pod = latest_pod(await self._pods(name))
            state = container_state(pod)
            if pod is not None and state is not None and (state.running or state.terminated):
                return _OutputSource(pod.metadata.name, ended=state.terminated is not None)
            if not wait or job_has_ended(job) or (pod is not None and _pod_has_ended(pod)):
                return _OutputSource(None, ended=True)
            await asyncio.sleep(self.poll_interval_seconds)

    async def _read_log(
        self, pod: str, cursor: _OutputCursor, offset: int, *, follow: bool
    ) -> AsyncIterator[OutputChunk]:
        cursor.complete = False
        cursor.log.restart()
        query: builtins.list[tuple[str, str]] = [
            ("container", CONTAINER_NAME),
            ("timestamps", "true"),
            ("follow", "true" if follow else "false"),
        ]
        since = cursor.log.since_time()
        if since is not None:
            query.append(("sinceTime", since))
        lines = TimestampedLines()
        client = await self._api_client()
        try:
            # read_namespaced_pod_log's own parameters lack sinceTime: the same call, by hand.
            response = await client.call_api(
                "/api/v1/namespaces/{namespace}/pods/{name}/log",
                "GET",
                path_params={"namespace": self.namespace, "name": pod},
                query_params=query,
                header_params={"Accept": "text/plain"},
                auth_settings=["BearerToken"],
                _preload_content=False,
            )
        except _BREAKS:
            return
        async with response:
            if response.status in (400, 404):
                # The pod went, or its container is not there any more: nothing to read.
                cursor.complete = True
                return
            if response.status != 200:
                raise RunnerError(
                    f"could not read the output of pod {pod}: {response.status} "
                    f"{await response.text()}"
                )
            try:
                while data := await response.content.read(OUTPUT_READ_BYTES):
                    chunk = _new_output(cursor.log, lines.feed(data), offset)
                    if chunk is not None:
                        yield chunk
            except _BREAKS:
                return
            # A followed stream may have been cut inside a line: its end comes again later.
            if not follow:
                chunk = _new_output(cursor.log, lines.rest(), offset)
                if chunk is not None:
                    yield chunk
                cursor.complete = True

    # --- stopping and removing ---------------------------------------------------------------

    async def stop(self, name: str, grace_seconds: float) -> None:
        if grace_seconds < 0:
            raise ValueError(f"grace_seconds must not be negative, not {grace_seconds}")
        job = await self._job(name)
        if job is None or job_has_ended(job):
            return
        await self._remove(name, grace_seconds)

    async def release_input(self, name: str) -> None:
        if not _WORKLOAD_NAME.match(name):
            return
        # A running pod keeps the files it mounted; only the API's copy goes.
        with _absent_is_fine():
            await (await self._core()).delete_namespaced_secret(name, self.namespace)

    async def delete(self, name: str) -> None:
        if not _WORKLOAD_NAME.match(name):
            return
        await self._remove(name, 0)
        # Normally the Job's to collect; not when the creator died before naming the owner.
        await self.release_input(name)

    async def _remove(self, name: str, grace: float) -> None:
        """Delete the Job, its pods after `grace`, and wait until Kubernetes has removed them."""
        batch, core = await self._batch(), await self._core()
        with _absent_is_fine():
            await batch.delete_namespaced_job(
                name, self.namespace, body=V1DeleteOptions(propagation_policy="Foreground")
            )
        # The garbage collector would delete the pods with their own grace period; the
        # caller's may be shorter.
        for pod in await self._pods(name):
            with _absent_is_fine():
                await core.delete_namespaced_pod(
                    pod.metadata.name,
                    self.namespace,
                    body=V1DeleteOptions(grace_period_seconds=grace_seconds(grace)),
                )
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + grace + STOP_MARGIN_SECONDS
        while await self._job(name) is not None:
            if loop.time() > give_up_at:
                raise RunnerError(f"the Job {name} was not removed within {grace:g} s and a margin")
            await asyncio.sleep(self.poll_interval_seconds)

    async def collect_garbage(
        self, *, finished_before: datetime | None = None, names: Collection[str] = ()
    ) -> builtins.list[str]:
        doomed = {name for name in names if await self._job(name) is not None}
        if finished_before is not None:
            doomed.update(
                status.name
                for status in await self.list()
                if status.finished_at is not None and status.finished_at < finished_before
            )
            await self._remove_orphaned_secrets(finished_before)
        await asyncio.gather(*(self.delete(name) for name in doomed))
        return sorted(doomed)

    async def _remove_orphaned_secrets(self, older_than: datetime) -> None:
        """Secrets whose creator died before making their Job their owner."""
        core = await self._core()
        secrets = await core.list_namespaced_secret(self.namespace, label_selector=JOB_ID_LABEL)
        for secret in secrets.items:
            if secret.metadata.owner_references or secret.metadata.creation_timestamp is None:
                continue
            if secret.metadata.creation_timestamp < older_than:
                with _absent_is_fine():
                    await core.delete_namespaced_secret(secret.metadata.name, self.namespace)


# --- watching ----------------------------------------------------------------------------------

_Kind = Literal["jobs", "pods"]
_KINDS: tuple[_Kind, ...] = ("jobs", "pods")


@dataclass(frozen=True)
class _Listing:
    kind: _Kind
    items: builtins.list[Any]


@dataclass(frozen=True)
class _Change:
    kind: _Kind
    type: str
    object: Any


@dataclass(frozen=True)
class _Failure:
    error: RunnerError


@dataclass(frozen=True)
class _Review:
    """Time passed: statuses that depend on it (an image failing to pull) may have changed."""


_Observation = _Listing | _Change | _Failure | _Review


async def _next_observation(
    feed: asyncio.Queue[_Observation], review_at: datetime | None
) -> _Observation:
    timeout = None if review_at is None else (review_at - datetime.now(UTC)).total_seconds()
    try:
        async with asyncio.timeout(None if timeout is None else max(timeout, 0)):
            observation = await feed.get()
    except TimeoutError:
        return _Review()
    if isinstance(observation, _Failure):
        raise observation.error
    return observation


class _ClusterView:
    """The Jobs and pods a watch has seen, by name. Each Job's pods, and the deadlines of
    pods failing to pull their image, are kept at hand: with a thousand workloads, looking
    through every pod on each change would cost more than the change."""

    def __init__(self, image_pull_limit: timedelta) -> None:
        self.image_pull_limit = image_pull_limit
        self.jobs: dict[str, V1Job] = {}
        self.pods: dict[str, V1Pod] = {}
        self._pods_by_job: dict[str, dict[str, V1Pod]] = {}
        self._pull_deadlines: dict[str, datetime] = {}

    def pods_of(self, job_name: str) -> builtins.list[V1Pod]:
        return list(self._pods_by_job.get(job_name, {}).values())

    def pod_end_unseen(self, job_name: str) -> bool:
        """Whether the Job failed on its pod's end, which the pods' watch has yet to bring."""
        job = self.jobs.get(job_name)
        return job is not None and pod_end_unseen(job, latest_pod(self.pods_of(job_name)))

    def replace(self, kind: _Kind, items: builtins.list[Any]) -> set[str]:
        """Take a listing; the names of the workloads it may have changed."""
        before = set(self.jobs)
        if kind == "jobs":
            self.jobs = {item.metadata.name: item for item in items}
        else:
            for name in builtins.list(self.pods):
                self._remove_pod(name)
            for pod in items:
                self._put_pod(pod)
        return before | set(self.jobs)

    def apply(self, observation: _Observation) -> set[str]:
        """Take an observation; the names of the workloads it may have changed."""
        match observation:
            case _Listing(kind, items):
                return self.replace(kind, items)
            case _Change("jobs", event_type, job):
                if event_type == "DELETED":
                    self.jobs.pop(job.metadata.name, None)
                else:
                    self.jobs[job.metadata.name] = job
                return {job.metadata.name}
            case _Change("pods", event_type, pod):
                self._remove_pod(pod.metadata.name)
                if event_type != "DELETED":
                    self._put_pod(pod)
                job_name = _job_name_of(pod)
                return set() if job_name is None else {job_name}
            case _:
                return set(self.jobs)

    def _put_pod(self, pod: V1Pod) -> None:
        name = pod.metadata.name
        self.pods[name] = pod
        job_name = _job_name_of(pod)
        if job_name is not None:
            self._pods_by_job.setdefault(job_name, {})[name] = pod
        deadline = image_pull_deadline(pod, self.image_pull_limit)
        if deadline is not None:
            self._pull_deadlines[name] = deadline

    def _remove_pod(self, name: str) -> None:
        pod = self.pods.pop(name, None)
        if pod is None:
            return
        self._pull_deadlines.pop(name, None)
        job_name = _job_name_of(pod)
        if job_name is None:
            return
        siblings = self._pods_by_job[job_name]
        del siblings[name]
        if not siblings:
            del self._pods_by_job[job_name]

    def next_review(self) -> datetime | None:
        """The next moment a pod failing to pull its image fails its workload."""
        now = datetime.now(UTC)
        return min(
            (deadline for deadline in self._pull_deadlines.values() if deadline > now), default=None
        )


def _job_name_of(pod: V1Pod) -> str | None:
    name: str | None = (pod.metadata.labels or {}).get(JOB_NAME_LABEL)
    return name


async def _reporting_failures(
    follow: Coroutine[Any, Any, None], feed: asyncio.Queue[_Observation]
) -> None:
    """Run a follower; should it fail, the watch it feeds fails with it instead of waiting."""
    try:
        await follow
    except Exception as error:
        await feed.put(_Failure(RunnerError(f"the watch failed: {error!r}")))
        raise


async def _pause(failures: int) -> None:
    await asyncio.sleep(RETRY_SECONDS[min(failures, len(RETRY_SECONDS)) - 1])


# --- output ------------------------------------------------------------------------------------


@dataclass
class _OutputCursor:
    log: LogCursor
    complete: bool = False
    """Whether the last read reached the end of the log the server had."""


@dataclass(frozen=True)
class _OutputSource:
    pod: str | None
    ended: bool
    """Whether the container has ended: its log is whole."""


def _pod_has_ended(pod: V1Pod) -> bool:
    return pod.status is not None and pod.status.phase in ("Succeeded", "Failed")


def _new_output(
    cursor: LogCursor, lines: Iterable[tuple[int, bytes]], offset: int
) -> OutputChunk | None:
    """The output in `lines` the cursor had not taken, from byte `offset` of the whole."""
    start = cursor.position
    data = b"".join(content for stamp, content in lines if cursor.take(stamp, content))
    skip = max(0, offset - start)
    if len(data) <= skip:
        return None
    return OutputChunk(offset=start + skip, data=data[skip:])


# --- errors --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _absent_is_fine() -> Iterator[None]:
    try:
        yield
    except ApiException as error:
        if error.status != 404:
            raise _runner_error("the Kubernetes API refused a change", error) from error


def _runner_error(what: str, error: ApiException) -> RunnerError:
    try:
        message = json.loads(error.body or "")["message"]
    except (TypeError, ValueError, KeyError):
        message = error.reason
    return RunnerError(f"{what}: {error.status} {message}")
