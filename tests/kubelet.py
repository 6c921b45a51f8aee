"""A small Kubernetes cluster for tests: kmock's emulator, the controllers a Job needs, a kubelet.

kmock's `KubernetesEmulator` keeps objects and serves create, read, patch, list,
watch and delete. `ClusterEmulator` adds what the runner relies on from a real API
server: resource versions and watches resumed from one (410 Gone once forgotten),
label selectors, uids and creation times, finalizers for propagation policies and
graceful pod deletion. `SimulatedCluster` runs it on a loopback port with a Job
controller, a garbage collector, and a `Kubelet` that runs each pod's command as a
local process (its Secret's files in a temporary folder), moves the pod through its
phases, serves its log, and kills it when the pod is deleted. An image may instead name
a `Program`, a coroutine the kubelet runs in place of a process: load tests run a
thousand pods that way, where a thousand processes would measure the machine instead.

Tests steer the cluster the way a real one misbehaves: hold pods before they start,
make an image unpullable, OOM-kill or evict a pod, forget watch history (410), drop
watches, and cut log streams.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import copy
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol
from uuid import uuid4

import kmock
import pytest
import yaml
from kmock._internal.aiobus import Bus

from ckrv.events.catalog import RunnerBackend
from ckrv.services.runners.kubernetes import KubernetesRunner
from ckrv.services.runners.settings import RunnerSettings
from ckrv.services.stack.ports import free_ports

KUBELET_FINALIZER = "kubelet.test/terminate-containers"
"""Holds a deleted pod while the kubelet stops its containers (the API server's graceful
deletion, which kmock lacks)."""
JOBS = kmock.resource("batch", "v1", "jobs")
PODS = kmock.resource("", "v1", "pods")
SECRETS = kmock.resource("", "v1", "secrets")
# Dependents of a deleted Job are orphaned unless the client says otherwise (batch/v1).
_DEFAULT_PROPAGATION = {JOBS: "Orphan"}
_GONE = {
    "type": "ERROR",
    "object": {
        "apiVersion": "v1",
        "kind": "Status",
        "status": "Failure",
        "code": 410,
        "reason": "Expired",
        "message": "too old resource version",
    },
}
_READ_BYTES = 64 * 1024
_HANDLED: contextvars.ContextVar[kmock.Request | None] = contextvars.ContextVar(
    "handled", default=None
)


def api_time(moment: datetime | None = None) -> str:
    """A timestamp as the API writes it: RFC 3339, whole seconds, UTC."""
    return (moment or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


def log_time(nanoseconds: int) -> str:
    """A log line's timestamp as the kubelet writes it: RFC 3339 with nanoseconds, trimmed."""
    seconds, fraction = divmod(nanoseconds, 1_000_000_000)
    whole = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    digits = f"{fraction:09d}".rstrip("0")
    return f"{whole}.{digits}Z" if digits else f"{whole}Z"


def selects(selector: str | None, labels: Mapping[str, str]) -> bool:
    """Whether a label selector (`a`, `!a`, `a=b`, `a==b`, `a!=b`, comma-joined) matches."""
    for term in filter(None, (selector or "").split(",")):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = re.split("==?", term, maxsplit=1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term.strip() not in labels:
            return False
    return True


@dataclass(frozen=True)
class Change:
    """One recorded change to an object, as a watch event."""

    version: int
    resource: kmock.resource
    event: dict[str, Any]

    @property
    def object(self) -> dict[str, Any]:
        found: dict[str, Any] = self.event["object"]
        return found


class _Recorder(Bus[Any]):
    """Stands in for kmock's per-resource event bus: each change goes to the emulator."""

    def __init__(self, emulator: ClusterEmulator, resource: kmock.resource) -> None:
        super().__init__()
        self.emulator = emulator
        self.resource = resource

    async def put(self, *items: Any) -> None:
        for item in items:
            await self.emulator.record(self.resource, item)


class _Recorders(dict[kmock.resource, Bus[Any]]):
    def __init__(self, emulator: ClusterEmulator) -> None:
        super().__init__()
        self.emulator = emulator

    def __missing__(self, resource: kmock.resource) -> Bus[Any]:
        self[resource] = recorder = _Recorder(self.emulator, resource)
        return recorder


class ClusterEmulator(kmock.KubernetesEmulator):
    """kmock's emulator with what a client of a real API server counts on (see the module)."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._buses = _Recorders(self)
        self.version = 0
        self.changes: list[Change] = []
        """Changes a watch can still resume from: versions `forgotten_before` on."""
        self.forgotten_before = 1
        self._changed = asyncio.Condition()
        self._subscribers: list[asyncio.Queue[Change]] = []
        self._watch_breaks = 0
        self._watch_break: dict[str, Any] | None = None
        # Who owns what, kept with each change: the garbage collector looks up an owner's
        # dependents here, where searching every object would take long with a thousand jobs.
        self._owners: dict[tuple[kmock.resource, str, str], set[str]] = {}
        self._dependents: dict[str, set[tuple[kmock.resource, str, str]]] = {}

    # --- changes -----------------------------------------------------------------------------

    async def record(self, resource: kmock.resource, event: dict[str, Any]) -> None:
        """Give a change the next resource version (also on the stored object) and tell all."""
        self.version += 1
        # The event shares its metadata with the stored object, which gets the version too.
        event["object"].setdefault("metadata", {})["resourceVersion"] = str(self.version)
        change = Change(self.version, resource, copy.deepcopy(event))
        self.changes.append(change)
        self._note_owners(change)
        for subscriber in self._subscribers:
            subscriber.put_nowait(change)
        async with self._changed:
            self._changed.notify_all()

    def _note_owners(self, change: Change) -> None:
        metadata = change.object["metadata"]
        key = (change.resource, metadata.get("namespace"), metadata["name"])
        owners = (
            set()
            if change.event["type"] == "DELETED"
            else {ref["uid"] for ref in metadata.get("ownerReferences") or []}
        )
        for uid in self._owners.pop(key, set()) - owners:
            self._dependents[uid].discard(key)
            if not self._dependents[uid]:
                del self._dependents[uid]
        for uid in owners:
            self._dependents.setdefault(uid, set()).add(key)
        if owners:
            self._owners[key] = owners

    def dependents(self, uid: str) -> list[tuple[kmock.resource, dict[str, Any]]]:
        """The objects that exist now with the object of `uid` among their owners."""
        found = []
        for resource, namespace, name in self._dependents.get(uid, set()):
            obj = self.find(resource, namespace, name)
            if obj is not None:
                found.append((resource, obj))
        return found

    async def subscribe(self) -> AsyncIterator[Change]:
        """Every change from now on, for the cluster's own controllers (never expires)."""
        queue: asyncio.Queue[Change] = asyncio.Queue()
        self._subscribers.append(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._subscribers.remove(queue)

    async def until(self, condition: Callable[[], bool]) -> None:
        """Return once `condition` holds; it is checked after each change."""
        async with self._changed:
            await self._changed.wait_for(condition)

    def live(self, resource: kmock.resource, namespace: str | None = None) -> list[dict[str, Any]]:
        """The objects of a resource that exist now (in one namespace, or all)."""
        return [
            obj.raw
            for (kind, where, _), obj in self.objects.items()
            if kind == resource and not obj.deleted and namespace in (None, where)
        ]

    def find(self, resource: kmock.resource, namespace: str, name: str) -> dict[str, Any] | None:
        key = (resource, namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        return self.objects[key].raw

    def _KubernetesEmulator__get_obj(  # noqa: N802 - kmock's own private method, by its mangled name
        self, request: kmock.Request, strict: bool
    ) -> Any:
        """The object a request names, found by its key. kmock compares the request with every
        object stored instead: milliseconds a request once a thousand jobs' objects are there."""
        if not strict or request.resource is None or request.name is None:
            return super()._KubernetesEmulator__get_obj(request, strict)  # type: ignore[misc]
        key = (request.resource, request.namespace, request.name)
        return self.objects[key] if key in self.objects else None  # noqa: SIM401 - no .get

    async def expire_watches(self) -> None:
        """Forget every change so far, and end each open watch with 410 Gone."""
        self.changes.clear()
        self.forgotten_before = self.version + 1
        await self._break_watches(_GONE)

    async def drop_watches(self) -> None:
        """End each open watch without a word, as a dropped connection would."""
        await self._break_watches(None)

    async def _break_watches(self, last_word: dict[str, Any] | None) -> None:
        self._watch_breaks += 1
        self._watch_break = last_word
        async with self._changed:
            self._changed.notify_all()

    # --- requests ----------------------------------------------------------------------------

    async def _handle(self, request: kmock.Request) -> Any:
        # kubernetes-asyncio asks `watch=True`; kmock only knows `watch=true`.
        if request.params.get("watch", "").lower() == "true":
            # In place: kmock's views know a request by its identity.
            object.__setattr__(request, "action", kmock.action.WATCH)
        if request.resource is not None and request.subresource is None:
            if request.action == kmock.action.CREATE and isinstance(request.data, dict):
                self._complete_new_object(request)
            elif request.action == kmock.action.DELETE and request.name is not None:
                await self._prepare_deletion(request)
        handled = _HANDLED.set(request)
        try:
            return await super()._handle(request)
        finally:
            _HANDLED.reset(handled)

    def __iter__(self) -> Iterator[kmock.Request]:
        # kmock finds the reactions that match a request by looking for it among all the
        # requests served so far, once per reaction: quadratic in the requests, which a
        # thousand jobs make slow. While a request is handled, it is all there is to look at.
        # (Reactions for a slice of the requests, `[:n]`, would need the whole history.)
        handled = _HANDLED.get()
        if handled is not None:
            yield handled
        else:
            yield from super().__iter__()

    def _complete_new_object(self, request: kmock.Request) -> None:
        metadata = request.data.setdefault("metadata", {})
        metadata["namespace"] = request.namespace or metadata.get("namespace")
        metadata["uid"] = str(uuid4())
        metadata["creationTimestamp"] = api_time()
        metadata.setdefault("generation", 1)

    async def _prepare_deletion(self, request: kmock.Request) -> None:
        """What the API server does before a delete: finalizers for the propagation policy,
        and for a pod, its grace period (a second delete may shorten it)."""
        assert request.resource is not None
        assert request.name is not None
        options = request.data if isinstance(request.data, dict) else {}
        key = (request.resource, request.namespace, request.name)
        async with self._lock:
            if key not in self.objects or self.objects[key].deleted:
                return  # kmock answers 404
            obj = self.objects[key]
            metadata = obj.raw["metadata"]
            is_pod = request.resource == PODS
            asked = options.get("gracePeriodSeconds")
            spec = obj.raw.get("spec", {})
            grace = int(spec.get("terminationGracePeriodSeconds", 30) if asked is None else asked)
            if metadata.get("deletionTimestamp"):
                if is_pod and grace < metadata.get("deletionGracePeriodSeconds", grace + 1):
                    obj.patch({"metadata": {"deletionGracePeriodSeconds": grace}})
                    await self.record(PODS, {"type": "MODIFIED", "object": obj.raw})
                return
            finalizers = list(metadata.get("finalizers") or [])
            policy = options.get("propagationPolicy") or (
                "Orphan"
                if options.get("orphanDependents")
                else _DEFAULT_PROPAGATION.get(request.resource, "Background")
            )
            if policy == "Foreground":
                finalizers.append("foregroundDeletion")
            elif policy == "Orphan":
                finalizers.append("orphan")
            changes: dict[str, Any] = {}
            if is_pod and grace > 0:
                finalizers.append(KUBELET_FINALIZER)
                changes["deletionGracePeriodSeconds"] = grace
            if finalizers:
                obj.patch({"metadata": {**changes, "finalizers": finalizers}})

    async def _serve_list(self, request: kmock.Request) -> dict[str, Any]:
        async with self._lock:
            items = self._selected(request)
            version = self.version
        return {"metadata": {"resourceVersion": str(version)}, "items": items}

    def _selected(self, request: kmock.Request) -> list[dict[str, Any]]:
        assert request.resource is not None
        selector = request.params.get("labelSelector")
        return [
            obj
            for obj in self.live(request.resource, request.namespace)
            if selects(selector, obj["metadata"].get("labels") or {})
        ]

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[Any]:
        yield b""  # the headers go at once, as a real server's do
        since = request.params.get("resourceVersion")
        breaks = self._watch_breaks
        async with self._lock:
            if since in (None, "", "0"):
                position = self.version
                for obj in self._selected(request):
                    yield {"type": "ADDED", "object": obj}
            elif int(since) + 1 < self.forgotten_before:
                yield _GONE
                return
            else:
                position = int(since)
        seconds = float(request.params.get("timeoutSeconds", 3600))

        def news() -> bool:
            return self.version > position or self._watch_breaks != breaks

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while True:
                    async with self._changed:
                        await self._changed.wait_for(news)
                    if self._watch_breaks != breaks:
                        if self._watch_break is not None:
                            yield self._watch_break
                        return
                    for change in self.changes[position + 1 - self.forgotten_before :]:
                        position = change.version
                        if self._watches(request, change):
                            yield change.event

    def _watches(self, request: kmock.Request, change: Change) -> bool:
        metadata = change.object["metadata"]
        return (
            change.resource == request.resource
            and request.namespace in (None, metadata.get("namespace"))
            and selects(request.params.get("labelSelector"), metadata.get("labels") or {})
        )


class Api:
    """The cluster's own components talk to the API server over HTTP, as they would."""

    def __init__(self, emulator: ClusterEmulator) -> None:
        self.emulator = emulator

    async def call(self, method: str, path: str, body: Any = None) -> dict[str, Any] | None:
        """The answer's object, or None if it is not there (404)."""
        async with self.emulator.request(method, path, json=body) as response:
            if response.status == 404:
                return None
            if response.status >= 400:
                raise RuntimeError(f"{method} {path}: {response.status} {await response.text()}")
            answer: dict[str, Any] = await response.json()
            return answer

    async def create(self, resource: kmock.resource, namespace: str, obj: dict[str, Any]) -> None:
        await self.call("POST", _path(resource, namespace), obj)

    async def patch(
        self, resource: kmock.resource, namespace: str, name: str, changes: dict[str, Any]
    ) -> None:
        await self.call("PATCH", _path(resource, namespace, name), changes)

    async def delete(
        self, resource: kmock.resource, namespace: str, name: str, **options: Any
    ) -> None:
        await self.call("DELETE", _path(resource, namespace, name), options or None)


def _path(resource: kmock.resource, namespace: str, name: str | None = None) -> str:
    base = "/api/v1" if resource.group == "" else f"/apis/{resource.group}/{resource.version}"
    path = f"{base}/namespaces/{namespace}/{resource.plural}"
    return path if name is None else f"{path}/{name}"


def _condition(kind: str, reason: str | None = None, message: str | None = None) -> dict[str, Any]:
    moment = api_time()
    condition = {"type": kind, "status": "True", "lastProbeTime": moment}
    condition["lastTransitionTime"] = moment
    if reason is not None:
        condition |= {"reason": reason, "message": message or reason}
    return condition


class Controllers:
    """The Job controller (one pod per Job, its end, its deadline) and the garbage collector."""

    def __init__(self, emulator: ClusterEmulator, api: Api) -> None:
        self.emulator = emulator
        self.api = api
        self._busy: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, changes: AsyncIterator[Change]) -> None:
        async for change in changes:
            obj, kind = change.object, change.event["type"]
            if change.resource == JOBS and kind == "ADDED":
                self._spawn(("job", obj["metadata"]["uid"]), self._start_job(obj))
            if change.resource == PODS and kind == "MODIFIED":
                await self._pod_changed(obj)
            metadata = obj["metadata"]
            if kind == "MODIFIED" and metadata.get("deletionTimestamp"):
                finalizers = metadata.get("finalizers") or []
                if "foregroundDeletion" in finalizers:
                    self._spawn(("foreground", metadata["uid"]), self._delete_first(change))
                if "orphan" in finalizers:
                    self._spawn(("orphan", metadata["uid"]), self._orphan(change))
            if kind == "DELETED":
                await self._delete_dependents(metadata["namespace"], metadata["uid"])

    def _spawn(self, key: tuple[str, str], work: Any) -> None:
        if key in self._busy:
            work.close()
            return
        self._busy.add(key)
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- Jobs --------------------------------------------------------------------------------

    async def _start_job(self, job: dict[str, Any]) -> None:
        metadata, spec = job["metadata"], job["spec"]
        namespace, name, uid = metadata["namespace"], metadata["name"], metadata["uid"]
        template = spec["template"]
        labels = {
            **(template.get("metadata", {}).get("labels") or {}),
            "job-name": name,
            "batch.kubernetes.io/job-name": name,
            "controller-uid": uid,
            "batch.kubernetes.io/controller-uid": uid,
        }
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{name}-{uuid4().hex[:5]}",
                "namespace": namespace,
                "labels": labels,
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": name,
                        "uid": uid,
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": copy.deepcopy(template["spec"]),
        }
        await self.api.patch(
            JOBS, namespace, name, {"status": {"startTime": api_time(), "active": 1}}
        )
        await self.api.create(PODS, namespace, pod)
        deadline = spec.get("activeDeadlineSeconds")
        if deadline is not None:
            await asyncio.sleep(deadline)
            await self._deadline_passed(namespace, name, uid)

    async def _deadline_passed(self, namespace: str, name: str, uid: str) -> None:
        job = self.emulator.find(JOBS, namespace, name)
        if job is None or job["metadata"].get("deletionTimestamp") or _has_ended(job):
            return
        conditions = [_condition("FailureTarget", "DeadlineExceeded")]
        await self.api.patch(JOBS, namespace, name, {"status": {"conditions": conditions}})
        for pod in self._pods_of(namespace, uid):
            await self.api.delete(PODS, namespace, pod["metadata"]["name"])
        await self.emulator.until(lambda: not self._pods_of(namespace, uid))
        failed = _condition(
            "Failed", "DeadlineExceeded", "Job was active longer than specified deadline"
        )
        status = {"conditions": [*conditions, failed], "failed": 1, "active": 0}
        await self.api.patch(JOBS, namespace, name, {"status": status})

    def _pods_of(self, namespace: str, uid: str) -> list[dict[str, Any]]:
        return [obj for resource, obj in self._dependents(namespace, uid) if resource == PODS]

    async def _pod_changed(self, pod: dict[str, Any]) -> None:
        phase = pod.get("status", {}).get("phase")
        owners = [
            ref for ref in pod["metadata"].get("ownerReferences") or [] if ref.get("controller")
        ]
        if phase not in ("Succeeded", "Failed") or not owners:
            return
        namespace = pod["metadata"]["namespace"]
        job = self.emulator.find(JOBS, namespace, owners[0]["name"])
        if job is None or job["metadata"].get("deletionTimestamp") or _has_ended(job):
            return
        if any(c["type"] == "FailureTarget" for c in job.get("status", {}).get("conditions") or []):
            return  # the deadline's, which records the end itself
        if phase == "Succeeded":
            conditions = [_condition("SuccessCriteriaMet"), _condition("Complete")]
            status = {"succeeded": 1, "completionTime": api_time()}
        else:
            reason, message = "BackoffLimitExceeded", "Job has reached the specified backoff limit"
            conditions = [_condition("FailureTarget", reason, message)]
            conditions.append(_condition("Failed", reason, message))
            status = {"failed": 1}
        status |= {"active": 0, "conditions": conditions}
        await self.api.patch(JOBS, namespace, job["metadata"]["name"], {"status": status})

    # --- garbage collection ------------------------------------------------------------------

    def _dependents(self, namespace: str, uid: str) -> list[tuple[kmock.resource, dict[str, Any]]]:
        return [
            (resource, obj)
            for resource, obj in self.emulator.dependents(uid)
            if resource in (PODS, SECRETS) and obj["metadata"]["namespace"] == namespace
        ]

    async def _delete_dependents(self, namespace: str, uid: str) -> None:
        for resource, obj in self._dependents(namespace, uid):
            if not obj["metadata"].get("deletionTimestamp"):
                await self.api.delete(resource, namespace, obj["metadata"]["name"])

    async def _delete_first(self, change: Change) -> None:
        """Foreground deletion: the dependents go, then the owner."""
        metadata = change.object["metadata"]
        namespace, uid = metadata["namespace"], metadata["uid"]
        await self._delete_dependents(namespace, uid)

        def blocking() -> bool:
            return any(
                ref.get("uid") == uid and ref.get("blockOwnerDeletion")
                for _, obj in self._dependents(namespace, uid)
                for ref in obj["metadata"].get("ownerReferences") or []
            )

        await self.emulator.until(lambda: not blocking())
        await self._drop_finalizer(change, "foregroundDeletion")

    async def _orphan(self, change: Change) -> None:
        metadata = change.object["metadata"]
        namespace, uid = metadata["namespace"], metadata["uid"]
        for resource, obj in self._dependents(namespace, uid):
            references = [r for r in obj["metadata"]["ownerReferences"] if r.get("uid") != uid]
            await self.api.patch(
                resource,
                namespace,
                obj["metadata"]["name"],
                {"metadata": {"ownerReferences": references}},
            )
        await self._drop_finalizer(change, "orphan")

    async def _drop_finalizer(self, change: Change, finalizer: str) -> None:
        metadata = change.object["metadata"]
        current = self.emulator.find(change.resource, metadata["namespace"], metadata["name"])
        if current is None:
            return
        finalizers = [f for f in current["metadata"].get("finalizers") or [] if f != finalizer]
        await self.api.patch(
            change.resource,
            metadata["namespace"],
            metadata["name"],
            {"metadata": {"finalizers": finalizers}},
        )


def _has_ended(job: Mapping[str, Any]) -> bool:
    return any(
        c["type"] in ("Complete", "Failed") and c["status"] == "True"
        for c in job.get("status", {}).get("conditions") or []
    )


# --- the kubelet ---------------------------------------------------------------------------------


@dataclass
class PodLog:
    """A container's log: lines with the moment the kubelet read them."""

    lines: list[tuple[int, bytes]] = field(default_factory=list)
    ended: bool = False
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def add(self, line: bytes) -> None:
        self.lines.append((time.time_ns(), line))
        async with self.changed:
            self.changed.notify_all()

    async def end(self) -> None:
        self.ended = True
        async with self.changed:
            self.changed.notify_all()


Program = Callable[[Mapping[str, str], PodLog], Coroutine[Any, Any, int]]
"""A container the kubelet runs as a coroutine: given its environment (mount paths made
local folders) and its log, it writes the log and returns the exit code."""


class Container(Protocol):
    """A started container, whether a process or a `Program`."""

    @property
    def returncode(self) -> int | None:
        """Its exit code once it ended; minus the signal's number if a signal ended it."""

    async def wait(self) -> int: ...

    def terminate(self) -> None:
        """SIGTERM to its main process."""

    def kill(self) -> None:
        """SIGKILL to everything in it."""

    async def close(self) -> None:
        """Once its main process ended: end the rest of it, and take the last of its output."""


class _ProcessContainer:
    """A container's main process, left unreaped until its process group has been killed.

    asyncio's subprocesses are reaped the moment they exit, after which their pid (the
    group's id) may go to any new process, such as a service the tests started: a later
    SIGKILL to the group, or a SIGTERM racing the reap, would reach that process instead.
    """

    def __init__(
        self, process: subprocess.Popen[bytes], output: asyncio.StreamReader, log: PodLog
    ) -> None:
        self._process = process
        self._returncode: int | None = None
        self._exited = asyncio.get_running_loop().create_future()
        self._pidfd = os.pidfd_open(process.pid)
        asyncio.get_running_loop().add_reader(self._pidfd, self._on_exit)
        self._reader = asyncio.create_task(_read_lines(output, log))

    @classmethod
    async def start(
        cls, argv: list[str], *, cwd: str, env: Mapping[str, str], log: PodLog
    ) -> _ProcessContainer:
        process = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        assert process.stdout is not None
        output = asyncio.StreamReader()
        await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(output), process.stdout
        )
        return cls(process, output, log)

    def _on_exit(self) -> None:
        asyncio.get_running_loop().remove_reader(self._pidfd)
        ended = os.waitid(os.P_PIDFD, self._pidfd, os.WEXITED | os.WNOWAIT)
        assert ended is not None
        exited_normally = ended.si_code == os.CLD_EXITED
        self._returncode = ended.si_status if exited_normally else -ended.si_status
        self._exited.set_result(None)

    @property
    def returncode(self) -> int | None:
        return self._returncode

    async def wait(self) -> int:
        # Shielded: a waiter given up on (see `_either`) must not cancel the exit itself.
        await asyncio.shield(self._exited)
        assert self._returncode is not None
        return self._returncode

    def terminate(self) -> None:
        signal.pidfd_send_signal(self._pidfd, signal.SIGTERM)

    def kill(self) -> None:
        if self._process.returncode is None:  # unreaped: the group's id is still ours
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._process.pid, signal.SIGKILL)

    async def close(self) -> None:
        # When the main process ends, the container ends: nothing else in it survives.
        self.kill()
        self._process.wait()
        os.close(self._pidfd)
        await self._reader


class _ProgramContainer:
    def __init__(self, program: Coroutine[Any, Any, int], log: PodLog) -> None:
        self._log = log
        self._signal: int | None = None
        self._code: int | None = None
        self._task = asyncio.create_task(self._run(program))

    async def _run(self, program: Coroutine[Any, Any, int]) -> None:
        try:
            self._code = await program
        except asyncio.CancelledError:
            if self._signal is None:  # not stopped as a container: the loop is closing
                raise
            self._code = -self._signal
        except Exception as error:  # a crash, as a process would print it and exit with 1
            await self._log.add(f"{type(error).__name__}: {error}\n".encode())
            self._code = 1

    @property
    def returncode(self) -> int | None:
        return self._code

    async def wait(self) -> int:
        await asyncio.wait({self._task})
        assert self._code is not None
        return self._code

    def _stop(self, signal_number: int) -> None:
        if not self._task.done() and self._signal is None:
            self._signal = signal_number
            self._task.cancel()

    def terminate(self) -> None:
        self._stop(signal.SIGTERM)

    def kill(self) -> None:
        self._stop(signal.SIGKILL)

    async def close(self) -> None:
        await self.wait()


@dataclass
class PodRun:
    """The kubelet's record of one pod."""

    namespace: str
    name: str
    log: PodLog | None = None
    """Set once its container started."""
    container: Container | None = None
    terminate: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the pod is deleted."""
    killed_for: str | None = None
    """`OOMKilled` or `Evicted` when the kubelet killed it for that."""
    grace_changed: asyncio.Event = field(default_factory=asyncio.Event)
    started_at: str | None = None


class Kubelet:
    """Runs pods as local processes, or as `Program`s (see the module)."""

    def __init__(self, emulator: ClusterEmulator, api: Api, root: Path) -> None:
        self.emulator = emulator
        self.api = api
        self.root = root
        self.unpullable_images: set[str] = set()
        self.programs: dict[str, Program] = {}
        """The images whose container runs as a `Program` instead of its command."""
        self.started: list[str] = []
        """Names of the pods whose container started, in order."""
        self.runs: dict[tuple[str, str], PodRun] = {}
        self._released = asyncio.Event()
        self._released.set()
        self._workers: set[asyncio.Task[None]] = set()
        self._log_cuts = 0
        self.log_requests = emulator[PODS, kmock.subresource("log")] << self._serve_log
        """The log requests served, for assertions."""

    # --- steering ----------------------------------------------------------------------------

    def hold(self) -> None:
        """Pods scheduled from now on wait, pending, until `release`."""
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    async def idle(self) -> None:
        """Return once every pod the kubelet took up is done with."""
        while self._workers:
            await asyncio.gather(*list(self._workers), return_exceptions=True)

    def oom_kill(self, namespace: str, pod: str) -> None:
        self._kill_for(namespace, pod, "OOMKilled")

    def evict(self, namespace: str, pod: str) -> None:
        self._kill_for(namespace, pod, "Evicted")

    def _kill_for(self, namespace: str, pod: str, reason: str) -> None:
        run = self.runs[namespace, pod]
        assert run.container is not None, f"pod {pod} runs no container"
        run.killed_for = reason
        run.container.kill()

    async def cut_log_streams(self) -> None:
        """End every log stream being followed, as a broken connection would."""
        self._log_cuts += 1
        for run in self.runs.values():
            if run.log is not None:
                async with run.log.changed:
                    run.log.changed.notify_all()

    # --- pods --------------------------------------------------------------------------------

    async def run(self, changes: AsyncIterator[Change]) -> None:
        async for change in changes:
            if change.resource != PODS:
                continue
            metadata = change.object["metadata"]
            key = (metadata["namespace"], metadata["name"])
            kind = change.event["type"]
            if kind == "ADDED" and key not in self.runs:
                self.runs[key] = run = PodRun(*key)
                worker = asyncio.create_task(self._run_pod(run, change.object))
                self._workers.add(worker)
                worker.add_done_callback(self._workers.discard)
            elif key in self.runs and (kind == "DELETED" or metadata.get("deletionTimestamp")):
                run = self.runs[key]
                run.terminate.set()
                run.grace_changed.set()
                if kind == "DELETED" and run.container is not None:
                    run.container.kill()

    async def stop(self) -> None:
        for run in self.runs.values():
            if run.container is not None and run.container.returncode is None:
                run.container.kill()
        for worker in list(self._workers):
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)

    async def _status(self, run: PodRun, status: dict[str, Any]) -> None:
        with contextlib.suppress(RuntimeError):  # the pod may be gone meanwhile
            await self.api.call(
                "PATCH", f"{_path(PODS, run.namespace, run.name)}/status", {"status": status}
            )

    async def _run_pod(self, run: PodRun, pod: dict[str, Any]) -> None:
        container = pod["spec"]["containers"][0]
        waiting = {"waiting": {"reason": "ContainerCreating"}}
        await self._status(
            run,
            {
                "phase": "Pending",
                "startTime": api_time(),
                "conditions": [_condition("PodScheduled")],
                "containerStatuses": [_container_status(container, waiting)],
            },
        )
        try:
            if await self._started(run, pod):
                await self._supervise(run, container)
        finally:
            if run.log is not None:
                await run.log.end()
            await self._release_pod(run)

    async def _release_pod(self, run: PodRun) -> None:
        """A deleted pod is done with: let the API server remove it."""
        await run.terminate.wait()
        current = self.emulator.find(PODS, run.namespace, run.name)
        if current is not None:
            finalizers = current["metadata"].get("finalizers") or []
            remaining = [f for f in finalizers if f != KUBELET_FINALIZER]
            with contextlib.suppress(RuntimeError):
                await self.api.patch(
                    PODS, run.namespace, run.name, {"metadata": {"finalizers": remaining}}
                )

    async def _started(self, run: PodRun, pod: dict[str, Any]) -> bool:
        """Everything before the container starts; False if the pod was deleted meanwhile or its
        container cannot start."""
        container = pod["spec"]["containers"][0]
        if not await _either(self._released.wait(), run.terminate.wait()):
            return False
        if container["image"] in self.unpullable_images:
            for reason in ("ErrImagePull", "ImagePullBackOff"):
                state = {
                    "waiting": {"reason": reason, "message": f"cannot pull {container['image']}"}
                }
                await self._status(
                    run, {"containerStatuses": [_container_status(container, state)]}
                )
            await run.terminate.wait()
            return False
        folders = await self._mount(run, pod)
        if folders is None:
            return False
        return await self._start(run, container, folders)

    async def _mount(self, run: PodRun, pod: dict[str, Any]) -> dict[str, Path] | None:
        """A local folder for each volume, by mount path; None if the pod was deleted first."""
        root = Path(tempfile.mkdtemp(prefix=f"{run.name}-", dir=self.root))
        folders: dict[str, Path] = {}
        fs_group = pod["spec"].get("securityContext", {}).get("fsGroup")
        volumes = {volume["name"]: volume for volume in pod["spec"].get("volumes") or []}
        for mount in pod["spec"]["containers"][0].get("volumeMounts") or []:
            volume = volumes[mount["name"]]
            folder = root / mount["name"]
            folder.mkdir(mode=0o700)
            if "secret" in volume:
                mode = volume["secret"].get("defaultMode", 0o644)
                if fs_group is not None:
                    mode |= 0o440  # as the kubelet does for a read-only volume with an fsGroup
                if not await self._fill(run, volume["secret"]["secretName"], folder, mode):
                    return None
            folders[mount["mountPath"]] = folder
        return folders

    async def _fill(self, run: PodRun, secret_name: str, folder: Path, mode: int) -> bool:
        """Write a Secret's files once it exists; False if the pod was deleted first."""

        def secret() -> dict[str, Any] | None:
            return self.emulator.find(SECRETS, run.namespace, secret_name)

        if not await _either(
            self.emulator.until(lambda: secret() is not None), run.terminate.wait()
        ):
            return False
        found = secret()
        assert found is not None
        for name, content in (found.get("data") or {}).items():
            path = folder / name
            path.write_bytes(base64.b64decode(content))
            path.chmod(mode)
        return True

    async def _start(
        self, run: PodRun, container: dict[str, Any], folders: dict[str, Path]
    ) -> bool:
        if run.terminate.is_set():
            return False

        def local(value: str) -> str:
            for mount_path, folder in folders.items():
                if value == mount_path or value.startswith(mount_path + "/"):
                    return str(folder) + value[len(mount_path) :]
            return value

        env = {"PATH": os.environ.get("PATH", os.defpath)}
        env |= {item["name"]: local(item.get("value", "")) for item in container.get("env") or []}
        command = [*container.get("command", []), *container.get("args", [])]
        started_at = api_time()
        log = PodLog()
        program = self.programs.get(container["image"])
        try:
            if program is not None:
                run.container = _ProgramContainer(program(env, log), log)
            else:
                run.container = await _ProcessContainer.start(
                    command, cwd=local(container.get("workingDir", "/")), env=env, log=log
                )
        except OSError as error:
            state = {
                "terminated": {
                    "exitCode": 128,
                    "reason": "StartError",
                    "message": str(error),
                    "startedAt": started_at,
                    "finishedAt": api_time(),
                }
            }
            await self._status(
                run, {"phase": "Failed", "containerStatuses": [_container_status(container, state)]}
            )
            return False
        run.log = log
        self.started.append(run.name)
        state = {"running": {"startedAt": started_at}}
        await self._status(
            run,
            {
                "phase": "Running",
                "conditions": [_condition("PodScheduled"), _condition("Ready")],
                "containerStatuses": [_container_status(container, state, ready=True)],
            },
        )
        run.started_at = started_at
        return True

    async def _supervise(self, run: PodRun, container: dict[str, Any]) -> None:
        running = run.container
        assert running is not None
        if not await _either(running.wait(), run.terminate.wait()):
            await self._terminate(running, run)
        await running.close()
        code = running.returncode
        assert code is not None
        exit_code = code if code >= 0 else 128 - code
        reason = "Completed" if exit_code == 0 else "Error"
        if run.killed_for == "OOMKilled":
            reason = "OOMKilled"
        state = {
            "terminated": {
                "exitCode": exit_code,
                "reason": reason,
                "startedAt": run.started_at,
                "finishedAt": api_time(),
            }
        }
        status: dict[str, Any] = {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "containerStatuses": [_container_status(container, state)],
        }
        if run.killed_for == "Evicted":
            status |= {"reason": "Evicted", "message": "The node was low on resource: memory."}
        await self._status(run, status)

    async def _terminate(self, container: Container, run: PodRun) -> None:
        """SIGTERM to the container's main process; SIGKILL to all of it after the grace period
        (which a second deletion may shorten)."""
        container.terminate()
        loop = asyncio.get_running_loop()
        asked_at = loop.time()
        while container.returncode is None:
            pod = self.emulator.find(PODS, run.namespace, run.name)
            grace = pod["metadata"].get("deletionGracePeriodSeconds", 0) if pod else 0
            run.grace_changed.clear()
            remaining = asked_at + grace - loop.time()
            if remaining <= 0:
                container.kill()
                await container.wait()
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await _either(container.wait(), run.grace_changed.wait())

    # --- logs --------------------------------------------------------------------------------

    def _serve_log(self, request: kmock.Request) -> AsyncIterator[bytes]:
        key = (request.namespace or "", request.name or "")
        if self.emulator.find(PODS, *key) is None:
            raise kmock.KubernetesObjectNotFoundError()
        run = self.runs.get(key)
        if run is None or run.log is None:
            raise kmock.KubernetesError(
                status=400,
                reason="BadRequest",
                message=f'container "worker" in pod "{key[1]}" is waiting to start',
            )
        since_text = request.params.get("sinceTime")
        # The API server passes sinceTime on to the kubelet in whole seconds.
        since = 0
        if since_text is not None:
            since = (
                int(datetime.fromisoformat(since_text.replace("Z", "+00:00")).timestamp()) * 10**9
            )
        return self._log_stream(
            run.log,
            follow=request.params.get("follow", "").lower() == "true",
            timestamps=request.params.get("timestamps", "").lower() == "true",
            since=since,
        )

    async def _log_stream(
        self, log: PodLog, *, follow: bool, timestamps: bool, since: int
    ) -> AsyncIterator[bytes]:
        yield b""
        cuts = self._log_cuts
        sent = 0

        def news() -> bool:
            return len(log.lines) > sent or log.ended or self._log_cuts != cuts

        while True:
            lines = log.lines[sent:]
            sent += len(lines)
            data = b"".join(
                (f"{log_time(stamp)} ".encode() if timestamps else b"") + line
                for stamp, line in lines
                if stamp >= since
            )
            if data:
                yield data
            if not follow or (log.ended and sent == len(log.lines)):
                return
            async with log.changed:
                await log.changed.wait_for(news)
            if self._log_cuts != cuts:
                return


def _container_status(
    container: Mapping[str, Any], state: dict[str, Any], *, ready: bool = False
) -> dict[str, Any]:
    return {
        "name": container["name"],
        "image": container["image"],
        "imageID": "",
        "ready": ready,
        "restartCount": 0,
        "state": state,
    }


async def _read_lines(stream: asyncio.StreamReader, log: PodLog) -> None:
    pending = b""
    while data := await stream.read(_READ_BYTES):
        *lines, pending = (pending + data).split(b"\n")
        for line in lines:
            await log.add(line + b"\n")
    if pending:
        await log.add(pending)


async def _either(first: Any, second: Any) -> bool:
    """Await both until one is done; whether it was the first. The other is cancelled."""
    tasks = [asyncio.ensure_future(first), asyncio.ensure_future(second)]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        return tasks[0] in done
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class SimulatedCluster:
    """The emulator on a loopback port with its controllers and kubelet (see the module)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.emulator = ClusterEmulator()
        self.api = Api(self.emulator)
        self.controllers = Controllers(self.emulator, self.api)
        self.kubelet = Kubelet(self.emulator, self.api, folder)
        self.kubeconfig = folder / "kubeconfig"
        self._stack = contextlib.AsyncExitStack()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> SimulatedCluster:
        (port,) = free_ports(1)
        await self._stack.enter_async_context(self.emulator)
        server = await self._stack.enter_async_context(kmock.Server(self.emulator, port=port))
        self._tasks = [
            asyncio.create_task(self.controllers.run(self.emulator.subscribe())),
            asyncio.create_task(self.kubelet.run(self.emulator.subscribe())),
        ]
        self.kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {"name": "kmock", "cluster": {"server": str(server.url).rstrip("/")}}
                    ],
                    "users": [{"name": "tests", "user": {"token": "not-checked"}}],
                    "contexts": [
                        {"name": "kmock", "context": {"cluster": "kmock", "user": "tests"}}
                    ],
                    "current-context": "kmock",
                }
            )
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.kubelet.stop()
        await self.controllers.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._stack.aclose()
        shutil.rmtree(self.folder, ignore_errors=True)

    def runner(self, **settings: Any) -> KubernetesRunner:
        """A runner for this cluster, in a namespace of its own unless `settings` name one."""
        return KubernetesRunner.from_settings(
            RunnerSettings(
                **{
                    "backend": RunnerBackend.KUBERNETES,
                    "kubernetes_kubeconfig": self.kubeconfig,
                    "kubernetes_namespace": f"test-{uuid4().hex[:12]}",
                    "kubernetes_poll_interval_seconds": 0.02,
                    **settings,
                }
            )
        )

    def pods_of(self, namespace: str, job: str) -> list[dict[str, Any]]:
        return [
            pod
            for pod in self.emulator.live(PODS, namespace)
            if (pod["metadata"].get("labels") or {}).get("job-name") == job
        ]

    def waiting_reason(self, namespace: str, job: str) -> str | None:
        """Why the container of the Job's pod waits (e.g. `ImagePullBackOff`), if it does."""
        for pod in self.pods_of(namespace, job):
            for container in pod.get("status", {}).get("containerStatuses") or []:
                reason: str | None = container["state"].get("waiting", {}).get("reason")
                return reason
        return None

    def requests(self, method: str, path: str) -> list[kmock.Request]:
        """The requests the API server received for a path."""
        return [
            request
            for request in self.emulator
            if request.method == method and request.url.path == path
        ]


@pytest.fixture(scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SimulatedCluster]:
    """A simulated cluster for a test module (import it into the module to use it)."""
    async with SimulatedCluster(tmp_path_factory.mktemp("cluster")) as simulated:
        yield simulated
