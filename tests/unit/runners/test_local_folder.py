"""A local workload's folder: status records survive the trip through the disk; the lock."""

from __future__ import annotations

import fcntl
import os
from datetime import UTC, datetime
from pathlib import Path

from ckrv.services.runners.lifecycle import FailureReason, WorkloadState
from ckrv.services.runners.local_folder import StatusRecord, WorkloadFolder


def test_a_status_record_reads_back_as_written(tmp_path: Path) -> None:
    folder = WorkloadFolder(tmp_path)
    record = StatusRecord(
        name="ckrv-job-x-1",
        job_id="0d9e3c1a-6f4b-4e8a-9c2d-7b1e5f3a8c60",
        attempt=1,
        state=WorkloadState.RUNNING,
        created_at=datetime(2025, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
        supervisor_pid=10,
        pid=11,
        started_at=datetime(2025, 1, 2, 3, 4, 6, tzinfo=UTC),
    )
    folder.write_status(record)
    assert folder.read_status() == record

    ended = record.finished(
        WorkloadState.FAILED, exit_code=137, reason=FailureReason.STOPPED, message="stopped"
    )
    folder.write_status(ended)
    assert folder.read_status() == ended
    assert ended.finished_at is not None
    assert ended.finished_at.tzinfo is not None
    assert [path.name for path in tmp_path.iterdir()] == ["status.json"]  # no partial left


def test_the_lock_is_free_only_while_nobody_holds_it(tmp_path: Path) -> None:
    folder = WorkloadFolder(tmp_path)
    with folder.lock_if_free() as free:
        assert free
        with folder.lock_if_free() as free_too:
            assert not free_too
    holder = os.open(folder.lock_path, os.O_RDWR)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        with folder.lock_if_free() as free:
            assert not free
    finally:
        os.close(holder)
    with folder.lock_if_free() as free:
        assert free


def test_the_lock_of_a_removed_folder_is_not_free(tmp_path: Path) -> None:
    with WorkloadFolder(tmp_path / "removed").lock_if_free() as free:
        assert not free


def test_a_stop_request_carries_its_grace_period(tmp_path: Path) -> None:
    folder = WorkloadFolder(tmp_path)
    assert folder.stop_grace() is None
    folder.request_stop(2.5)
    assert folder.stop_grace() == 2.5
