"""Hot-swap: independent runtimes follow activations (NOTIFY on Postgres, polling on SQLite)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from monitor.calibrations import service
from monitor.db.session import session_scope
from monitor.runtime import Runtime, open_runtime
from monitor.serving.hotswap import HotSwapService
from monitor.serving.model_push import ModelPusher
from monitor.settings import Settings
from tests.jobs.support import TASK, add_calibration

pytestmark = pytest.mark.timeout(60)


def activate(sessions: sessionmaker[Session], calibration_id: int) -> float:
    """Activate and commit; returns the monotonic time of the commit."""
    with session_scope(sessions) as session:
        service.activate(session, calibration_id)
    return time.monotonic()


async def wait_for_version(runtimes: list[Runtime], version: int, timeout: float) -> float:
    """Seconds until every runtime's table serves `version` for the task."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        entries = [rt.calibration_table.get(TASK) for rt in runtimes]
        if all(e is not None and e.version == version for e in entries):
            return time.monotonic() - start
        await asyncio.sleep(0.005)
    raise AssertionError(f"not all runtimes switched to version {version} within {timeout}s")


def fast_settings(make_settings: Callable[..., Settings], **extra: Any) -> Settings:
    # A long resync, so only the listener (or the poll) can explain a fast swap.
    hot_swap = {"poll_interval_s": 0.05, "resync_interval_s": 300}
    return make_settings(hot_swap=hot_swap, **extra)


def test_two_runtimes_switch_within_a_second_and_roll_back(
    backend: str, sessions: sessionmaker[Session], make_settings: Callable[..., Settings]
) -> None:
    v1 = add_calibration(sessions, version=1, temperature=1.5, status="active")
    v2 = add_calibration(sessions, version=2, temperature=2.5, status="retired")
    settings = fast_settings(make_settings)

    async def scenario() -> list[float]:
        runtimes = [open_runtime(settings, "api") for _ in range(2)]
        services = [HotSwapService(rt) for rt in runtimes]
        for svc in services:
            await svc.start()
        try:
            assert [rt.calibration_table.get(TASK).version for rt in runtimes] == [1, 1]  # type: ignore[union-attr]
            if backend == "postgres":
                for svc in services:
                    await asyncio.wait_for(svc.listening.wait(), 5)
            snapshot = runtimes[0].calibration_table.snapshot()
            await asyncio.to_thread(activate, sessions, v2)
            forward = await wait_for_version(runtimes, 2, 1.0)
            assert snapshot[TASK].version == 1  # a request's snapshot is never mutated
            assert runtimes[0].calibration_table.get(TASK).temperature == 2.5  # type: ignore[union-attr]
            await asyncio.to_thread(activate, sessions, v1)
            back = await wait_for_version(runtimes, 1, 1.0)
            return [forward, back]
        finally:
            for svc in services:
                await svc.stop()
            for rt in runtimes:
                rt.engine.dispose()

    delays = asyncio.run(scenario())
    assert max(delays) < 1.0


def test_postgres_listener_reconnects_after_losing_its_connection(
    backend: str, sessions: sessionmaker[Session], make_settings: Callable[..., Settings]
) -> None:
    if backend != "postgres":
        pytest.skip("LISTEN/NOTIFY is Postgres only")
    add_calibration(sessions, version=1, temperature=1.5, status="active")
    v2 = add_calibration(sessions, version=2, temperature=2.5, status="retired")
    settings = fast_settings(make_settings)
    url = make_url(settings.resolved_database_url)
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)

    async def scenario() -> None:
        runtime = open_runtime(settings, "api")
        svc = HotSwapService(runtime)
        await svc.start()
        try:
            await asyncio.wait_for(svc.listening.wait(), 5)
            with psycopg.connect(dsn, autocommit=True) as admin:
                killed = admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = 'thermostat-hot-swap' AND datname = %s",
                    (url.database,),
                ).fetchall()
            assert len(killed) == 1
            # The outage is noticed at the next ping; activate while it is down.
            await asyncio.to_thread(activate, sessions, v2)
            await wait_for_version([runtime], 2, 15.0)
            await asyncio.wait_for(svc.listening.wait(), 5)
        finally:
            await svc.stop()
            runtime.engine.dispose()

    import monitor.serving.hotswap as hotswap

    original = hotswap.PING_INTERVAL_S
    hotswap.PING_INTERVAL_S = 0.2
    try:
        asyncio.run(scenario())
    finally:
        hotswap.PING_INTERVAL_S = original


class FlakyModelServer:
    """A real loopback HTTP server whose PUT /admin/calibration fails `failures` times."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.requests: list[tuple[str, dict[str, Any], int]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status = 503 if outer.failures > 0 else 200
                outer.failures -= 1
                outer.requests.append((self.path, body, status))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FlakyModelServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def model_server() -> Iterator[FlakyModelServer]:
    with FlakyModelServer(failures=2) as server:
        yield server


def test_activations_are_pushed_to_the_model_server_until_acknowledged(
    sessions: sessionmaker[Session],
    make_settings: Callable[..., Settings],
    model_server: FlakyModelServer,
) -> None:
    v1 = add_calibration(sessions, version=1, temperature=1.9, status="retired")
    settings = fast_settings(make_settings, model_admin_url=model_server.url)

    async def scenario() -> None:
        runtime = open_runtime(settings, "api")
        svc = HotSwapService(runtime)
        assert svc.pusher is not None
        await svc.pusher.close()
        svc.pusher = ModelPusher(model_server.url, backoff_base_s=0.05, backoff_max_s=0.2)
        await svc.start()
        try:
            await asyncio.to_thread(activate, sessions, v1)
            await wait_for_version([runtime], 1, 2.0)
            assert await svc.pusher.wait_idle(5.0)
            assert svc.pusher.acknowledged[TASK]["version"] == 1
        finally:
            await svc.stop()
            runtime.engine.dispose()

    asyncio.run(scenario())
    assert [status for _, _, status in model_server.requests] == [503, 503, 200]
    path, body, _ = model_server.requests[-1]
    assert path == "/admin/calibration"
    assert body == {"task": TASK, "temperature": 1.9, "version": 1, "apply_to_sampling": False}


def test_a_worker_job_switches_the_table_of_a_running_runtime(
    sessions: sessionmaker[Session], make_settings: Callable[..., Settings]
) -> None:
    from monitor.jobs.worker import WorkerService
    from tests.jobs.support import TRUE_T, seed_generations

    seed_generations(sessions, 1000)
    settings = fast_settings(make_settings, worker={"poll_interval_s": 0.05})

    async def scenario() -> float:
        runtime = open_runtime(settings, "all")
        services: list[HotSwapService | WorkerService] = [
            HotSwapService(runtime),
            WorkerService(runtime, device="cpu"),
        ]
        for svc in services:
            await svc.start()
        try:
            assert runtime.calibration_table.get(TASK) is None
            with session_scope(runtime.sessions) as session:
                from monitor.db.models.enums import JobTrigger
                from monitor.jobs.queue import enqueue_recalibration

                enqueue_recalibration(session, TASK, JobTrigger.manual)
            await wait_for_version([runtime], 1, 20.0)
            entry = runtime.calibration_table.get(TASK)
            assert entry is not None
            return entry.temperature
        finally:
            for svc in reversed(services):
                await svc.stop()
            runtime.engine.dispose()

    temperature = asyncio.run(scenario())
    assert abs(temperature - TRUE_T) / TRUE_T < 0.15
