"""Pushing activations to the model server's `PUT {url}/admin/calibration`.

The model server applies a task's temperature to sampling only for tasks that
opt in (`apply_calibration_to_sampling`), but it is told about every
activation so its table mirrors ours. A push is retried with exponential
backoff until the server acknowledges it (any 2xx); a newer activation for
the same task replaces a pending one, so the server never ends on a stale
version even if pushes were in flight when it came back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import httpx

log = logging.getLogger(__name__)


def push_body(task: str, temperature: float, version: int | None, apply: bool) -> dict[str, Any]:
    return {
        "task": task,
        "temperature": temperature,
        "version": version,
        "apply_to_sampling": apply,
    }


class ModelPusher:
    """One delivery loop per task with pending work; the latest body per task wins."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 5.0,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = base_url.rstrip("/") + "/admin/calibration"
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._client = httpx.AsyncClient(timeout=timeout_s, transport=transport)
        self._pending: dict[str, dict[str, Any]] = {}
        self._loops: dict[str, asyncio.Task[None]] = {}
        self.acknowledged: dict[str, dict[str, Any]] = {}
        self.attempts = 0
        self.failures = 0

    def submit(self, body: dict[str, Any]) -> None:
        """Queue `body` for its task; returns at once (delivery runs in the background)."""
        task = str(body["task"])
        self._pending[task] = body
        loop = self._loops.get(task)
        if loop is None or loop.done():
            self._loops[task] = asyncio.create_task(self._deliver(task), name=f"push {task}")

    def pending(self) -> dict[str, dict[str, Any]]:
        return dict(self._pending)

    async def wait_idle(self, timeout: float) -> bool:
        """True once every submitted body is acknowledged (tests, shutdown)."""
        async with asyncio.timeout(timeout):
            while self._pending:
                await asyncio.sleep(0.01)
        return True

    async def _deliver(self, task: str) -> None:
        delay = self.backoff_base_s
        while task in self._pending:
            body = self._pending[task]
            if await self._put(body):
                self.acknowledged[task] = body
                if self._pending.get(task) is body:
                    del self._pending[task]
                delay = self.backoff_base_s
                continue  # a newer body may have arrived meanwhile
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff_max_s)

    async def _put(self, body: dict[str, Any]) -> bool:
        self.attempts += 1
        try:
            response = await self._client.put(self.url, json=body)
        except httpx.HTTPError as exc:
            self.failures += 1
            log.warning("push to %s failed (%s); will retry", self.url, exc)
            return False
        if response.is_success:
            log.info("model server acknowledged %s version %s", body["task"], body["version"])
            return True
        self.failures += 1
        log.warning("push to %s answered %s; will retry", self.url, response.status_code)
        return False

    async def close(self) -> None:
        for loop in self._loops.values():
            loop.cancel()
        for loop in self._loops.values():
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        self._loops.clear()
        await self._client.aclose()
