"""Run a long job step in a daemon thread, so a stopping process does not wait for it.

`asyncio.to_thread` uses the loop's default executor, whose threads the
process joins at exit: after Ctrl-C the worker's lifespan shut down at once,
but the process then sat in `shutdown_default_executor` until the fit and the
re-scoring finished (seconds to minutes), committing the job after
"Finished server process", and a second Ctrl-C in that wait landed in asyncio's
and uvicorn's teardown as a CancelledError or "Event loop is closed"
traceback. SIGTERM never waited (uvicorn re-raises it with the default
action). A daemon thread ends with the process, as a fit under SIGTERM or
SIGKILL does: the job keeps its lease, and when the lease expires any worker
re-queues it (`repository.requeue_expired`).

Short database calls (claim, heartbeat) still use `asyncio.to_thread`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class Interrupted(RuntimeError):
    """The worker is stopping: the job step gave up before writing anything."""


async def run_in_daemon_thread(
    func: Callable[..., T], *args: Any, name: str = "thermostat-job", **kwargs: Any
) -> T:
    """Await `func(*args, **kwargs)` run in a new daemon thread.

    Cancelling the await leaves the thread running (nothing can interrupt a
    fit); its result is then dropped, also when the loop has closed meanwhile.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    context = contextvars.copy_context()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():
            outcome()

    def deliver(outcome: Callable[[], None]) -> None:
        # RuntimeError: the loop is closed, the process is exiting.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, outcome)

    def target() -> None:
        try:
            result = context.run(func, *args, **kwargs)
        except Exception as exc:
            deliver(functools.partial(future.set_exception, exc))
        else:
            deliver(functools.partial(future.set_result, result))

    threading.Thread(target=target, name=name, daemon=True).start()
    return await future
