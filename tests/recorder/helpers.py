"""Builders shared by the recorder, feedback and fault tests."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from sqlalchemy import create_engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.testclient import TestClient

from monitor.db.session import make_session_factory
from monitor.proxy.recorder import Recorder, get_recorder
from monitor.proxy.records import GenerationRecord


def make_record(task: str = "qa", n: int = 4, k: int = 5, **overrides: object) -> GenerationRecord:
    rng = np.random.default_rng(len(task) + n)
    top = np.sort(rng.uniform(-8, 0, size=(n, k)).astype(np.float32), axis=1)[:, ::-1].copy()
    values: dict[str, object] = {
        "task": task,
        "model": "tiny",
        "response_text": "the answer is 4",
        "finish_reason": "stop",
        "token_count": n,
        "top_k": k,
        "chosen": top[:, 0].copy(),
        "top": top,
        "chosen_rank": np.zeros(n, dtype=np.int8),
        "raw_confidence": 0.8,
        "confidence": 0.7,
        "temperature": 1.3,
        "calibration_version": 2,
    }
    values.update(overrides)
    return GenerationRecord(**values)  # type: ignore[arg-type]


def unreachable_sessions(backend: str) -> sessionmaker[Session]:
    """A session factory whose every connection attempt fails, like a database that is down."""
    if backend == "postgres":
        url = "postgresql+psycopg://postgres@127.0.0.1:1/none"
        engine = create_engine(url, connect_args={"connect_timeout": 1})
    else:
        engine = create_engine("sqlite:////nonexistent-thermostat-dir/down.db")
    return make_session_factory(engine)


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def recorder_of(client: TestClient) -> Recorder:
    """The recorder of the app a TestClient runs (its lifespan started it)."""
    recorder = get_recorder(client.app.state.runtime)  # type: ignore[attr-defined]
    assert recorder is not None
    return recorder


_HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def hold_spool_lock(spool_dir: Path, seconds: float = 60.0) -> subprocess.Popen[str]:
    """Another process holding `spool_dir`'s lock, as a running api process would."""
    spool_dir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(spool_dir / ".lock"), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdout.readline() == "held\n"
    return process


@contextmanager
def spool_held_elsewhere(spool_dir: Path) -> Iterator[subprocess.Popen[str]]:
    process = hold_spool_lock(spool_dir)
    try:
        yield process
    finally:
        process.kill()
        process.wait(timeout=10)
