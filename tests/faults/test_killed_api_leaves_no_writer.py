"""`thermostat serve` killed with SIGKILL: its recorder writer process exits too.

A `ProcessPoolExecutor` worker does not notice its parent's death by itself;
`writer_process.py` watches the parent, so a crashed api process never
leaves a writer holding database connections.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.faults.test_sigterm import CHAT, serve_env, wait_ready
from tests.support.fake_upstream import FakeUpstream
from tests.support.servers import free_port


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(c) for c in (task / "children").read_text().split()}
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's reaping is missing


@pytest.mark.timeout(60)
def test_writer_process_exits_when_the_api_process_is_killed(db_url: str, tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with FakeUpstream() as upstream:
        env = serve_env(
            db_url,
            tmp_path / "home",
            THERMOSTAT_UPSTREAM_URL=upstream.base_url,
            THERMOSTAT_RECORDER__FLUSH_INTERVAL_S="0.05",
        )
        process = subprocess.Popen(
            [sys.executable, "-m", "monitor", "serve", "--role", "api", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_ready(base, process)
            for _ in range(5):
                assert httpx.post(f"{base}/v1/chat/completions", json=CHAT).status_code == 200
            deadline = time.monotonic() + 20
            while not (children := _children(process.pid)):  # the writer starts with a batch
                assert time.monotonic() < deadline, "no writer process started"
                time.sleep(0.1)
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
            deadline = time.monotonic() + 10
            while any(_alive(child) for child in children):
                assert time.monotonic() < deadline, "the writer outlived the api process"
                time.sleep(0.1)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
