"""Keeps this process's calibration table equal to the database's active versions.

Postgres: a dedicated psycopg connection LISTENs on `thermostat_calibration`;
activation NOTIFYs inside its transaction, so the message arrives only after
the commit and a reload always sees the new row. The connection is pinged
between waits and re-opened with backoff after an outage, with a full reload
on every (re)connect to cover notifications sent while it was down. SQLite
has no LISTEN: a cheap signature query is polled instead. Both also resync
the whole table periodically as a safety net. Which of the two, and the
LISTEN connection itself, come from `monitor.db.notify`.

The swap itself is `CalibrationTable.replace` (one reference assignment), so a
request in flight keeps the snapshot it started with. Reloads are serialised
by a lock so an older read can never overwrite a newer one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping

from monitor.calibrations.repository import NOTIFY_CHANNEL, activation_signature
from monitor.db import notify
from monitor.db.session import session_scope
from monitor.runtime import Runtime
from monitor.serving.calibration_table import CalibrationEntry, load_active_calibrations
from monitor.serving.model_push import ModelPusher, push_body

log = logging.getLogger(__name__)

PING_INTERVAL_S = 10.0
RECONNECT_MAX_S = 10.0


class HotSwapService:
    name = "hot-swap"

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.settings = runtime.settings.hot_swap
        self.table = runtime.calibration_table
        url = runtime.settings.model_admin_url
        self.pusher = ModelPusher(url) if url else None
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self.listening = asyncio.Event()  # set while a Postgres LISTEN is active
        self.reloads = 0
        self.last_swap_monotonic: float | None = None

    async def start(self) -> None:
        polling = not notify.can_listen(self.runtime.settings.resolved_database_url)
        seen = await asyncio.to_thread(self._signature) if polling else None
        await self.reload("start", push_all=True)
        watch = self._poll(seen) if polling else self._listen()
        self._tasks = [
            asyncio.create_task(watch, name="hot-swap watch"),
            asyncio.create_task(self._resync(), name="hot-swap resync"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self.pusher is not None:
            await self.pusher.close()

    async def reload(self, why: str, *, push_all: bool = False) -> bool:
        """Read the active versions and swap them in; True if anything changed."""
        async with self._lock:
            entries = await asyncio.to_thread(self._load)
            previous = self.table.snapshot()
            changed = self.table.replace(entries)
            self.reloads += 1
        if changed:
            self.last_swap_monotonic = time.monotonic()
            log.info("calibration table swapped (%s): %s", why, _describe(entries))
        self._push(previous, entries, push_all)
        return changed

    def _load(self) -> dict[str, CalibrationEntry]:
        with session_scope(self.runtime.sessions) as session:
            return load_active_calibrations(session)

    def _push(
        self,
        previous: Mapping[str, CalibrationEntry],
        entries: Mapping[str, CalibrationEntry],
        push_all: bool,
    ) -> None:
        if self.pusher is None:
            return
        for task, entry in entries.items():
            if push_all or previous.get(task) != entry:
                apply = self.runtime.settings.task_config(task).apply_calibration_to_sampling
                self.pusher.submit(push_body(task, entry.temperature, entry.version, apply))

    # ------------------------------------------------------------- Postgres
    async def _listen(self) -> None:
        delay = 0.2
        while True:
            try:
                async with notify.Listener(
                    self.runtime.settings.resolved_database_url,
                    NOTIFY_CHANNEL,
                    application_name="thermostat-hot-swap",
                ) as listener:
                    delay = 0.2
                    self.listening.set()
                    await self.reload("listening")  # whatever happened while we were away
                    while True:
                        if await listener.wait(PING_INTERVAL_S):
                            await self.reload("notify")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.listening.clear()
                log.warning("hot-swap listener lost the database (%s); retry in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_S)

    # --------------------------------------------------------------- SQLite
    def _signature(self) -> tuple[object, ...]:
        with session_scope(self.runtime.sessions) as session:
            return activation_signature(session)

    async def _poll(self, seen: tuple[object, ...] | None) -> None:
        """`seen` was read before the start-up load, so nothing in between is missed."""
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            try:
                signature = await asyncio.to_thread(self._signature)
                if signature != seen:
                    await self.reload("poll")
                    seen = signature
            except Exception as exc:
                log.warning("hot-swap poll failed (%s); retrying", exc)

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(self.settings.resync_interval_s)
            try:
                await self.reload("resync")
            except Exception as exc:
                log.warning("hot-swap resync failed (%s); retrying later", exc)


def _describe(entries: Mapping[str, CalibrationEntry]) -> str:
    return ", ".join(f"{t}=v{e.version}/T{e.temperature:.3f}" for t, e in sorted(entries.items()))


def create_hot_swap(runtime: Runtime) -> HotSwapService:
    return HotSwapService(runtime)
