"""Two real `thermostat serve --role api` processes on one THERMOSTAT_HOME.

They would share `home/spool`: both write the same segment files, and a
replay by one deletes rows the other acknowledged. The second is refused at
start, in one line, after a short wait; the first keeps serving and recording;
once the first is gone (stopped, or killed with SIGKILL) a new one starts.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.faults.test_sigterm import CHAT, serve_env, wait_ready
from tests.recorder.helpers import wait_for
from tests.support.fake_upstream import FakeUpstream
from tests.support.servers import free_port

SERVE_API = [sys.executable, "-m", "monitor", "serve", "--role", "api"]
ADMIN = {"Authorization": "Bearer admin-token"}
# Shorter than the 10 s default, so the refusal below costs less of the suite.
CLAIM_WAIT_S = 2.0
# Tokens set, so a start logs nothing at WARNING and a refusal is the only line.
TOKENS = {"THERMOSTAT_ADMIN_TOKEN": "admin-token", "THERMOSTAT_FEEDBACK_TOKEN": "fb-token"}


@pytest.fixture
def env(db_url: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    with FakeUpstream() as upstream:
        yield serve_env(
            db_url,
            tmp_path / "home",
            THERMOSTAT_UPSTREAM_URL=upstream.base_url,
            THERMOSTAT_RECORDER__FLUSH_INTERVAL_S="0.05",
            THERMOSTAT_RECORDER__SPOOL_CLAIM_WAIT_S=str(CLAIM_WAIT_S),
            **TOKENS,
        )


@contextmanager
def api_process(
    env: dict[str, str], log_path: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [*SERVE_API, "--port", str(port)], env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
    try:
        wait_ready(base, process)
        yield base, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def assert_records(base: str) -> None:
    """A chat completion through the process is answered and its generation written."""
    response = httpx.post(f"{base}/v1/chat/completions", json=CHAT, timeout=10)
    assert response.status_code == 200, response.text
    gid = response.headers["x-thermostat-generation-id"]
    url = f"{base}/api/generations/{gid}"
    wait_for(lambda: httpx.get(url, headers=ADMIN, timeout=5).status_code == 200, timeout=15)


@pytest.mark.timeout(120)
def test_a_second_api_process_on_one_home_is_refused_and_the_first_keeps_working(
    env: dict[str, str], tmp_path: Path
) -> None:
    with api_process(env, tmp_path / "first.log") as (base, first):
        assert_records(base)
        started = time.monotonic()
        second = subprocess.run(
            [*SERVE_API, "--port", str(free_port())],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1, second.stderr
        spool = (tmp_path / "home" / "spool").resolve()
        assert second.stderr.strip().splitlines() == [
            f"thermostat serve: error: another thermostat process is using the spool at {spool}; "
            "give each api process its own THERMOSTAT_HOME"
        ]
        assert time.monotonic() - started >= CLAIM_WAIT_S  # it waited for a predecessor first
        assert first.poll() is None
        assert httpx.get(f"{base}/readyz", timeout=5).status_code == 200
        assert_records(base)
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=30)
    with api_process(env, tmp_path / "third.log") as (base, _):
        assert_records(base)


@pytest.mark.timeout(90)
def test_the_spool_is_free_again_when_its_holder_is_killed(
    env: dict[str, str], tmp_path: Path
) -> None:
    with api_process(env, tmp_path / "killed.log") as (base, first):
        assert_records(base)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    env["THERMOSTAT_RECORDER__SPOOL_CLAIM_WAIT_S"] = "60"
    started = time.monotonic()
    with api_process(env, tmp_path / "next.log") as (base, _):
        assert time.monotonic() - started < 60  # no wait for a lock nobody holds
        assert_records(base)
