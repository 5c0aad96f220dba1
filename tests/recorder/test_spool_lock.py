"""One process per spool folder: a flock the recorder holds while it runs.

Two processes on one folder would write the same segment files and delete
each other's rows on replay, so the second is refused (after a short wait for
a predecessor that is still shutting down). The lock is per process: claims
within one process share it, and the OS drops it when the holder dies.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy.orm import Session, sessionmaker

from monitor.proxy.metrics import ProxyMetrics
from monitor.proxy.recorder import Recorder
from monitor.proxy.spool import SpoolInUse, claim_spool
from monitor.settings import RecorderSettings
from tests.recorder.helpers import hold_spool_lock, spool_held_elsewhere

_TRY_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    sys.exit(1)
"""


def _free_for_another_process(spool_dir: Path) -> bool:
    lock = str(spool_dir / ".lock")
    return subprocess.run([sys.executable, "-c", _TRY_LOCK, lock], timeout=30).returncode == 0


def test_a_spool_another_process_holds_is_refused_in_one_line(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    with spool_held_elsewhere(spool_dir), pytest.raises(SpoolInUse) as refused:
        claim_spool(spool_dir, wait_s=0.3)
    assert refused.value.message == (
        f"another thermostat process is using the spool at {spool_dir.resolve()}; "
        "give each api process its own THERMOSTAT_HOME"
    )


def test_the_lock_goes_with_a_holder_killed_by_sigkill(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    holder = hold_spool_lock(spool_dir)
    assert not _free_for_another_process(spool_dir)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    claim_spool(spool_dir, wait_s=0).release()


def test_a_holder_that_lets_go_within_the_wait_is_waited_for(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    holder = hold_spool_lock(spool_dir, seconds=1.0)  # a predecessor still shutting down
    started = time.monotonic()
    claim = claim_spool(spool_dir, wait_s=10)
    assert time.monotonic() - started > 0.5
    assert holder.wait(timeout=10) == 0
    claim.release()


def test_claims_in_one_process_share_the_lock_until_the_last_goes(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    first = claim_spool(spool_dir, wait_s=0)
    second = claim_spool(spool_dir, wait_s=0)  # e.g. the serve pre-check, then the recorder
    first.release()
    first.release()  # idempotent: does not give up the second claim
    assert not _free_for_another_process(spool_dir)
    second.release()
    assert _free_for_another_process(spool_dir)


def test_the_recorder_holds_its_spool_until_it_stops(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    spool_dir = tmp_path / "spool"
    settings = RecorderSettings(writer_process=False)
    recorder = Recorder(settings, sessions, spool_dir, ProxyMetrics(CollectorRegistry()))
    asyncio.run(recorder.start())
    try:
        assert not _free_for_another_process(spool_dir)
    finally:
        asyncio.run(recorder.stop())
    assert _free_for_another_process(spool_dir)


def test_a_recorder_is_refused_a_spool_another_process_holds(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    spool_dir = tmp_path / "spool"
    settings = RecorderSettings(spool_claim_wait_s=0.3)
    with spool_held_elsewhere(spool_dir), pytest.raises(SpoolInUse, match="THERMOSTAT_HOME"):
        Recorder(settings, sessions, spool_dir, ProxyMetrics(CollectorRegistry()))
    recorder = Recorder(RecorderSettings(), sessions, spool_dir, ProxyMetrics(CollectorRegistry()))
    asyncio.run(recorder.stop())  # once the other process is gone, it is free
