"""Work on an event loop of its own: it runs beside the process's loop, stops, fails loudly."""

from __future__ import annotations

import asyncio
import threading

import pytest

from ckrv.services.common.service import run_in_thread


async def test_the_work_runs_on_another_thread_and_loop_until_stopped() -> None:
    here = (threading.get_ident(), asyncio.get_running_loop())
    there: list[tuple[int, asyncio.AbstractEventLoop]] = []
    started = threading.Event()

    async def work(stop: asyncio.Event) -> None:
        there.append((threading.get_ident(), asyncio.get_running_loop()))
        started.set()
        await stop.wait()

    stop = asyncio.Event()
    running = asyncio.create_task(run_in_thread("test work", work, stop))
    await asyncio.to_thread(started.wait, 5)
    assert there[0][0] != here[0]
    assert there[0][1] is not here[1]
    assert not running.done()
    stop.set()
    await asyncio.wait_for(running, 5)


async def test_the_work_keeps_going_while_this_loop_is_blocked() -> None:
    ticks: list[float] = []

    async def work(stop: asyncio.Event) -> None:
        while not stop.is_set():
            ticks.append(asyncio.get_running_loop().time())
            await asyncio.sleep(0.01)

    stop = asyncio.Event()
    running = asyncio.create_task(run_in_thread("test work", work, stop))
    await asyncio.sleep(0.05)
    before = len(ticks)
    threading.Event().wait(0.3)  # this loop busy: no callback of it runs meanwhile
    assert len(ticks) - before >= 5
    stop.set()
    await asyncio.wait_for(running, 5)


async def test_a_failure_of_the_work_is_raised_to_the_caller() -> None:
    async def work(_: asyncio.Event) -> None:
        await asyncio.sleep(0.01)
        raise ConnectionError("the database went away")

    with pytest.raises(ConnectionError, match="the database went away"):
        await asyncio.wait_for(run_in_thread("test work", work, asyncio.Event()), 5)


async def test_cancelling_the_caller_cancels_the_work_and_waits_until_it_has_ended() -> None:
    started = threading.Event()
    ended: list[str] = []

    async def work(_: asyncio.Event) -> None:
        started.set()
        try:
            await asyncio.sleep(3600)  # deaf to `stop`, as work past the shutdown timeout is
        except asyncio.CancelledError:
            await asyncio.sleep(0.2)  # handing back what it held takes a moment
            ended.append("cancelled and cleaned up")
            raise

    stop = asyncio.Event()
    running = asyncio.create_task(run_in_thread("test work", work, stop))
    await asyncio.to_thread(started.wait, 5)
    stop.set()
    await asyncio.sleep(0.05)
    assert not running.done()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(running, 5)
    assert ended == ["cancelled and cleaned up"]
