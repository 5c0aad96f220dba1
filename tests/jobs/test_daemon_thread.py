"""`run_in_daemon_thread`: results and errors reach the awaiting task; a cancel drops them."""

from __future__ import annotations

import asyncio
import threading

import pytest

from monitor.jobs.daemon import run_in_daemon_thread


def test_result_error_and_daemon_flag() -> None:
    seen: list[bool] = []

    def work(x: int, *, y: int) -> int:
        seen.append(threading.current_thread().daemon)
        return x + y

    def fail() -> None:
        raise ValueError("boom")

    async def scenario() -> None:
        assert await run_in_daemon_thread(work, 2, y=3) == 5
        with pytest.raises(ValueError, match="boom"):
            await run_in_daemon_thread(fail)

    asyncio.run(scenario())
    assert seen == [True]


def test_cancelled_await_leaves_the_thread_and_drops_its_result() -> None:
    release = threading.Event()
    finished = threading.Event()

    def slow() -> int:
        release.wait(10)
        finished.set()
        return 1

    async def scenario() -> None:
        task = asyncio.create_task(run_in_daemon_thread(slow))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())  # returns without waiting for the thread
    assert not finished.is_set()
    release.set()  # the loop is closed now: the late result is dropped quietly
    assert finished.wait(5)
