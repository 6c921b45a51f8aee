"""Child supervision on real (tiny) programs: escalation to SIGKILL, group sweep, start errors."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from ckrv.services.stack.process import ChildProcess, StartError, Supervised
from tests.processes import process_tree, survivors


async def test_a_program_ignoring_sigterm_is_killed_with_its_group(tmp_path: Path) -> None:
    child = ChildProcess(
        "stubborn",
        ["sh", "-c", "trap '' TERM; sleep 60 & wait"],
        log_path=tmp_path / "stubborn.log",
    )
    child.spawn()
    assert child.pid is not None
    await asyncio.sleep(0.2)
    tree = process_tree(child.pid)
    assert len(tree) == 2
    await child.stop(timeout=0.3)
    assert child.returncode == -signal.SIGKILL
    assert survivors(tree) == set()


async def test_helpers_left_behind_by_an_exited_program_are_ended(tmp_path: Path) -> None:
    log = tmp_path / "leaves.log"
    child = ChildProcess("forks-and-leaves", ["sh", "-c", "sleep 60 & sleep 0.5"], log_path=log)
    child.spawn()
    assert child.pid is not None
    await asyncio.sleep(0.2)
    tree = process_tree(child.pid)
    assert len(tree) > 1
    assert await child.wait() == 0
    # SIGKILL takes effect asynchronously; the orphaned helper is gone a moment later.
    for _ in range(40):
        if not survivors(tree):
            break
        await asyncio.sleep(0.05)
    assert survivors(tree) == set()


class NeverReady(Supervised):
    def __init__(self, log_path: Path, script: str) -> None:
        super().__init__("never-ready", log_path)
        self.script = script

    def command(self) -> list[str]:
        return ["sh", "-c", self.script]

    async def is_ready(self) -> bool:
        raise ConnectionRefusedError("nobody listens")


async def test_an_early_exit_reports_the_code_and_the_log_tail(tmp_path: Path) -> None:
    part = NeverReady(tmp_path / "early.log", "echo 'bad config line 3' >&2; exit 7")
    with pytest.raises(StartError) as failure:
        await part.start(timeout=10)
    assert str(failure.value) == (
        f"never-ready exited with code 7 while starting; last lines of {tmp_path / 'early.log'}:\n"
        "bad config line 3"
    )


async def test_a_start_timeout_names_the_last_probe_error_and_stops_the_program(
    tmp_path: Path,
) -> None:
    part = NeverReady(tmp_path / "slow.log", "echo waiting; exec sleep 60")
    with pytest.raises(StartError) as failure:
        await part.start(timeout=0.5)
    message = str(failure.value)
    assert message.startswith(
        "never-ready did not become ready within 0.5 s "
        "(last probe: ConnectionRefusedError: nobody listens)"
    )
    assert message.endswith("waiting")
    assert part.process is not None
    assert part.process.returncode == -signal.SIGTERM
