"""SIGTERM under load against a real `thermostat serve` process: the queue is flushed.

Every request that got a 200 must have its generation row once the process
has exited (the recorder drains its queue on shutdown), every row must be
whole (arrays unpack to the recorded token count), and nothing may be left
in the spool.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from monitor.calibration.packing import unpack_token_logprobs
from monitor.db.models import Generation
from tests.support.fake_upstream import FakeUpstream
from tests.support.servers import free_port

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}


def wait_ready(base: str, process: subprocess.Popen[bytes], timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"serve exited early: {process.returncode}")
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("serve did not become ready")


def serve_env(db_url: str, home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("THERMOSTAT_")}
    env.update(THERMOSTAT_HOME=str(home), THERMOSTAT_DATABASE_URL=db_url, **extra)
    return env


@pytest.mark.timeout(90)
def test_sigterm_under_load_flushes_every_acknowledged_generation(
    db_url: str, tmp_path: Path, sessions: sessionmaker[Session]
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    ok: list[uuid.UUID] = []
    errors: list[str] = []
    stop = threading.Event()
    with FakeUpstream() as upstream:
        upstream.mode = {"delay_ms": "5-40"}
        env = serve_env(
            db_url,
            tmp_path / "home",
            THERMOSTAT_UPSTREAM_URL=upstream.base_url,
            # A slow writer, so the queue holds rows when the signal arrives.
            THERMOSTAT_RECORDER__FLUSH_INTERVAL_S="1.0",
            THERMOSTAT_RECORDER__BATCH_SIZE="1000",
        )
        log_path = tmp_path / "serve.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "monitor", "serve", "--role", "api", "--port", str(port)],
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
            try:
                wait_ready(base, process)

                def load(worker: int) -> None:
                    with httpx.Client(base_url=base, timeout=10) as client:
                        i = 0
                        while not stop.is_set():
                            i += 1
                            body = {
                                **CHAT,
                                "messages": [{"role": "user", "content": f"{worker}-{i}"}],
                            }
                            try:
                                response = client.post("/v1/chat/completions", json=body)
                            except httpx.HTTPError:
                                return  # the server has stopped accepting: expected
                            if response.status_code == 200:
                                ok.append(uuid.UUID(response.headers["x-thermostat-generation-id"]))
                            else:
                                errors.append(f"{response.status_code} {response.text[:200]}")

                threads = [threading.Thread(target=load, args=(w,)) for w in range(6)]
                for thread in threads:
                    thread.start()
                time.sleep(1.5)
                in_flight_before = len(ok)
                process.send_signal(signal.SIGTERM)
                rc = process.wait(timeout=40)
                stop.set()
                for thread in threads:
                    thread.join(timeout=15)
            finally:
                stop.set()
                if process.poll() is None:
                    process.kill()
                    process.wait(timeout=10)
    log = log_path.read_text(errors="replace")
    # uvicorn re-raises the signal after a graceful shutdown: -SIGTERM is a clean exit.
    assert rc in (0, -signal.SIGTERM), log
    assert "Application shutdown complete" in log, log
    assert "Traceback" not in log, log
    assert in_flight_before > 20 and not errors, errors[:3]
    with sessions() as session:
        rows = {row.id: row for row in session.scalars(select(Generation))}
    missing = [gid for gid in ok if gid not in rows]
    assert not missing, f"{len(missing)} of {len(ok)} acknowledged generations lost"
    assert len(rows) == len(set(ok))  # and nothing extra, nothing twice
    for row in rows.values():
        assert row.task == "default" and not row.partial and row.confidence is not None
        assert row.logprobs is not None
        chosen, _top, _rank = unpack_token_logprobs(row.logprobs)
        assert chosen.shape[0] == row.token_count > 0
    spool = tmp_path / "home" / "spool"
    assert not list(spool.glob("*.spool")) or all(p.stat().st_size == 0 for p in spool.iterdir())
