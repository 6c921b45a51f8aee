"""The `local` runner: each workload a supervised, sandboxed subprocess with a folder of its own.

`create` writes the workload's folder (see `local_folder`) and starts its
supervisor (`local_supervisor`) detached, so the workload survives the process
that created it. Everything else reads and signals through the folder, so any
process with a `LocalRunner` over the same root sees and controls the same
workloads: the dispatcher creates, the watcher watches, the log-relay reads output.

Folder operations are a few small local files each; they run on the event loop
rather than in a thread, whose hand-off would cost more than the work.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import errno
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Collection, Sequence
from datetime import datetime
from pathlib import Path
from uuid import UUID

from ckrv.events.catalog import RunnerBackend
from ckrv.services.runners.base import (
    INPUT_DIR_ENV,
    WORKSPACE_DIR_ENV,
    FailureReason,
    OutputChunk,
    Runner,
    RunnerError,
    Workload,
    WorkloadNotFound,
    WorkloadRequest,
    WorkloadState,
    WorkloadStatus,
)
from ckrv.services.runners.local_folder import (
    STOP_SIGNAL,
    LaunchPlan,
    StatusRecord,
    WorkloadFolder,
    utc_now,
    write_json_atomically,
)
from ckrv.services.runners.sandbox import (
    SANDBOX_TMP,
    bubblewrap_argv,
    default_read_only_paths,
    find_bubblewrap,
)
from ckrv.services.runners.settings import RunnerSettings, SandboxMode

SUPERVISOR_MODULE = "ckrv.services.runners.local_supervisor"
OUTPUT_READ_BYTES = 64 * 1024
# How long `stop` waits, beyond the grace period, for the supervisor to record the end.
STOP_MARGIN_SECONDS = 10.0
# Folders being made or removed: hidden from listings, and collected when left behind.
CREATING_PREFIX = ".creating-"
DELETING_PREFIX = ".deleting-"


class LocalRunner(Runner):
    """Workloads as subprocesses on this machine, in folders under `root`.

    Limits without cgroups: the memory limit caps each process's data segment, so an
    allocation past it fails (reason `Error`, never `OOMKilled`); the CPU limit is not
    enforced. A relative `root` is taken from the current working directory.
    """

    backend = RunnerBackend.LOCAL

    def __init__(
        self,
        root: Path,
        *,
        sandbox: SandboxMode = SandboxMode.AUTO,
        sandbox_read_only_paths: Sequence[Path] = (),
        poll_interval_seconds: float = 0.05,
    ) -> None:
        """Check the tools at hand: `setsid`, and bubblewrap unless the sandbox is off."""
        self.root = root.absolute()
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.poll_interval_seconds = poll_interval_seconds
        setsid = shutil.which("setsid")
        if setsid is None:
            raise RunnerError("the local runner needs `setsid` (util-linux) on PATH")
        self._setsid = setsid
        self.bubblewrap = None if sandbox is SandboxMode.OFF else find_bubblewrap()
        if sandbox is SandboxMode.REQUIRED and self.bubblewrap is None:
            raise RunnerError(
                "the sandbox is required but bubblewrap (bwrap) is missing or cannot create "
                "namespaces here; install it (apt-get install bubblewrap) or set "
                "CKRV_RUNNER_SANDBOX=auto"
            )
        self._read_only = [*default_read_only_paths(), *sandbox_read_only_paths]

    @classmethod
    def from_settings(cls, settings: RunnerSettings) -> LocalRunner:
        return cls(
            settings.root,
            sandbox=settings.sandbox,
            sandbox_read_only_paths=settings.sandbox_read_only_paths,
            poll_interval_seconds=settings.poll_interval_seconds,
        )

    @property
    def sandboxed(self) -> bool:
        return self.bubblewrap is not None

    def _folder(self, name: str) -> WorkloadFolder:
        # A name is one path component, never one of the runner's own hidden folders.
        if not name or name.startswith(".") or "/" in name or "\0" in name:
            raise WorkloadNotFound(name)
        return WorkloadFolder(self.root / name)

    # --- creating ----------------------------------------------------------------------------

    async def create(self, request: WorkloadRequest) -> Workload:
        folder = self._folder(request.name)
        created = not folder.path.exists() and self._make_folder(request, folder)
        if created or self._never_started(folder):
            await self._start_supervisor(folder)
        status = self._observe(folder)
        if status is None:
            raise RunnerError(f"workload {request.name} was deleted while being created")
        return Workload(status=status, created=created)

    def _make_folder(self, request: WorkloadRequest, folder: WorkloadFolder) -> bool:
        """Write the folder whole under a temporary name, then rename it into place.

        False if a workload of that name appeared meanwhile (another creator won).
        """
        draft = WorkloadFolder(self.root / f"{CREATING_PREFIX}{folder.name}-{secrets.token_hex(4)}")
        draft.path.mkdir(mode=0o700)
        try:
            self._write_draft(request, draft, final=folder)
            try:
                draft.path.rename(folder.path)
            except OSError as error:
                if error.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    return False
                raise
            return True
        finally:
            shutil.rmtree(draft.path, ignore_errors=True)

    def _write_draft(
        self, request: WorkloadRequest, draft: WorkloadFolder, *, final: WorkloadFolder
    ) -> None:
        for directory in (draft.input_dir, draft.workspace_dir, draft.tmp_dir):
            directory.mkdir(mode=0o700)
        for file_name, content in request.input_files.items():
            _write_private_file(draft.input_dir / file_name, content)
        _write_private_file(draft.output_path, b"")
        write_json_atomically(
            draft.request_path,
            {
                **request.model_dump(mode="json", exclude={"input_files"}),
                "name": request.name,
                "input_file_names": sorted(request.input_files),
            },
        )
        write_json_atomically(draft.launch_path, self._launch_plan(request, final).to_json())
        draft.write_status(
            StatusRecord(
                name=request.name,
                job_id=str(request.job_id),
                attempt=request.attempt,
                state=WorkloadState.PENDING,
                created_at=utc_now(),
            )
        )

    def _launch_plan(self, request: WorkloadRequest, folder: WorkloadFolder) -> LaunchPlan:
        # A clean environment, as in a container: the runner's own (database URLs, keys)
        # must not leak into a job.
        env = {
            # The interpreter's folder first: `ckrv-worker` is installed there.
            "PATH": os.pathsep.join(
                [str(Path(sys.executable).parent), os.environ.get("PATH", os.defpath)]
            ),
            "HOME": str(folder.workspace_dir),
            "LANG": "C.UTF-8",
            "TMPDIR": SANDBOX_TMP if self.bubblewrap else str(folder.tmp_dir),
            **request.env,
            INPUT_DIR_ENV: str(folder.input_dir),
            WORKSPACE_DIR_ENV: str(folder.workspace_dir),
        }
        argv = list(request.command)
        if self.bubblewrap is not None:
            argv = bubblewrap_argv(
                self.bubblewrap,
                argv,
                read_only=self._read_only,
                hidden=self.root,
                workspace=folder.workspace_dir,
                input_dir=folder.input_dir,
            )
        return LaunchPlan(
            argv=argv,
            program=request.command[0],
            env=env,
            cwd=str(folder.workspace_dir),
            time_limit_seconds=request.time_limit_seconds,
            grace_seconds=request.grace_seconds,
            memory_limit_bytes=request.memory_limit_bytes,
            sandboxed=self.bubblewrap is not None,
        )

    def _never_started(self, folder: WorkloadFolder) -> bool:
        """Whether the workload waits for a supervisor nobody started (its creator died)."""
        try:
            record = folder.read_status()
        except FileNotFoundError:
            return False
        if record.state is not WorkloadState.PENDING or record.supervisor_pid is not None:
            return False
        with folder.lock_if_free() as free:
            return free

    async def _start_supervisor(self, folder: WorkloadFolder) -> None:
        # `setsid --fork` returns at once and leaves the supervisor in a session of its own,
        # a child of init: neither our signals nor our death reach it, and it is not ours to reap.
        with folder.supervisor_log_path.open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                self._setsid,
                "--fork",
                sys.executable,
                "-m",
                SUPERVISOR_MODULE,
                str(folder.path),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={},
            )
            code = await process.wait()
        if code != 0:
            raise RunnerError(
                f"could not start the supervisor of {folder.name} (setsid exited with {code}); "
                f"see {folder.supervisor_log_path}"
            )

    # --- observing ---------------------------------------------------------------------------

    def _observe(self, folder: WorkloadFolder) -> WorkloadStatus | None:
        try:
            record = folder.read_status()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if record.state is WorkloadState.PENDING and record.supervisor_pid is None:
            return _status(record)  # its supervisor is yet to start
        if not record.state.is_finished:
            record = self._record_if_lost(folder) or record
        return _status(record)

    def _record_if_lost(self, folder: WorkloadFolder) -> StatusRecord | None:
        """If the supervisor is gone without recording an end, record the loss; the record."""
        with folder.lock_if_free() as free:
            if not free:
                return None
            # Read again: it may have recorded the end just before it exited.
            record = folder.read_status()
            if record.state.is_finished or record.supervisor_pid is None:
                return record
            record = record.finished(
                WorkloadState.FAILED,
                reason=FailureReason.LOST,
                message=f"its supervisor ended without recording an end; see "
                f"{folder.supervisor_log_path}",
            )
            folder.write_status(record)
            return record

    async def get(self, name: str) -> WorkloadStatus | None:
        try:
            folder = self._folder(name)
        except WorkloadNotFound:
            return None
        return self._observe(folder)

    async def list(self) -> builtins.list[WorkloadStatus]:
        return self._list()

    def _list(self) -> builtins.list[WorkloadStatus]:
        statuses = []
        for entry in sorted(os.listdir(self.root)):
            if not entry.startswith("."):
                status = self._observe(WorkloadFolder(self.root / entry))
                if status is not None:
                    statuses.append(status)
        return statuses

    async def watch(self) -> AsyncIterator[WorkloadStatus]:
        seen: dict[str, WorkloadStatus] = {}
        while True:
            current = {status.name: status for status in self._list()}
            for name, status in current.items():
                if seen.get(name) != status:
                    yield status
            for name in seen.keys() - current.keys():
                yield dataclasses.replace(seen[name], state=WorkloadState.GONE)
            seen = current
            await asyncio.sleep(self.poll_interval_seconds)

    async def read_output(
        self, name: str, offset: int = 0, *, follow: bool = False
    ) -> AsyncIterator[OutputChunk]:
        if offset < 0:
            raise ValueError(f"offset must not be negative, not {offset}")
        folder = self._folder(name)
        try:
            output = folder.output_path.open("rb")
        except FileNotFoundError:
            raise WorkloadNotFound(name) from None
        with output:
            output.seek(offset)
            while True:
                data = output.read(OUTPUT_READ_BYTES)
                if data:
                    yield OutputChunk(offset=offset, data=data)
                    offset += len(data)
                    continue
                if not follow:
                    return
                status = self._observe(folder)
                if status is None or status.is_finished:
                    # The end is recorded after the last write: what is left is all there is.
                    while data := output.read(OUTPUT_READ_BYTES):
                        yield OutputChunk(offset=offset, data=data)
                        offset += len(data)
                    return
                await asyncio.sleep(self.poll_interval_seconds)

    # --- stopping and removing ---------------------------------------------------------------

    async def stop(self, name: str, grace_seconds: float) -> None:
        if grace_seconds < 0:
            raise ValueError(f"grace_seconds must not be negative, not {grace_seconds}")
        try:
            folder = self._folder(name)
        except WorkloadNotFound:
            return
        status = self._observe(folder)
        if status is None or status.is_finished:
            return
        # First the request, then the look at the supervisor: one that has not recorded its
        # pid yet reads the request after it does (see Supervisor.run).
        folder.request_stop(grace_seconds)
        signalled = False
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + grace_seconds + STOP_MARGIN_SECONDS
        while loop.time() < give_up_at:
            try:
                record = folder.read_status()
            except FileNotFoundError:
                return
            if record.supervisor_pid is None:
                if self._stopped_before_start(folder):
                    return
            elif not signalled:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(record.supervisor_pid, STOP_SIGNAL)
                signalled = True
            status = self._observe(folder)
            if status is None or status.is_finished:
                return
            await asyncio.sleep(self.poll_interval_seconds)
        raise RunnerError(f"workload {name} did not stop within {grace_seconds:g} s and a margin")

    def _stopped_before_start(self, folder: WorkloadFolder) -> bool:
        """Record the stop of a workload no supervisor has taken up; False if one has."""
        with folder.lock_if_free() as free:
            if not free:
                return False
            record = folder.read_status()
            if record.supervisor_pid is None:
                folder.remove_input()
                folder.write_status(
                    record.finished(
                        WorkloadState.FAILED,
                        reason=FailureReason.STOPPED,
                        message="stopped before it started",
                    )
                )
            return record.supervisor_pid is None

    async def release_input(self, name: str) -> None:
        try:
            folder = self._folder(name)
        except WorkloadNotFound:
            return
        folder.remove_input()

    async def delete(self, name: str) -> None:
        try:
            folder = self._folder(name)
        except WorkloadNotFound:
            return
        await self.stop(name, grace_seconds=0)
        self._remove(folder)

    def _remove(self, folder: WorkloadFolder) -> None:
        # Renamed away first, so nobody sees a half-removed workload.
        doomed = self.root / f"{DELETING_PREFIX}{folder.name}-{secrets.token_hex(4)}"
        try:
            folder.path.rename(doomed)
        except FileNotFoundError:
            return
        shutil.rmtree(doomed, ignore_errors=True)

    async def collect_garbage(
        self, *, finished_before: datetime | None = None, names: Collection[str] = ()
    ) -> builtins.list[str]:
        doomed = {name for name in names if await self.get(name) is not None}
        if finished_before is not None:
            doomed.update(
                status.name
                for status in self._list()
                if status.finished_at is not None and status.finished_at < finished_before
            )
            self._remove_leftovers(finished_before)
        for name in sorted(doomed):
            await self.delete(name)
        return sorted(doomed)

    def _remove_leftovers(self, older_than: datetime) -> None:
        """Folders a creator or deleter left half-done when it died (they may hold inputs)."""
        for entry in os.listdir(self.root):
            if entry.startswith((CREATING_PREFIX, DELETING_PREFIX)):
                path = self.root / entry
                with contextlib.suppress(FileNotFoundError):
                    if datetime.fromtimestamp(path.stat().st_mtime, older_than.tzinfo) < older_than:
                        shutil.rmtree(path, ignore_errors=True)


def _write_private_file(path: Path, content: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(content)


def _status(record: StatusRecord) -> WorkloadStatus:
    return WorkloadStatus(
        name=record.name,
        job_id=UUID(record.job_id),
        attempt=record.attempt,
        state=record.state,
        created_at=record.created_at,
        started_at=record.started_at,
        finished_at=record.finished_at,
        exit_code=record.exit_code,
        reason=record.reason,
        message=record.message,
    )
