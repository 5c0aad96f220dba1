"""Test helpers: a real webhook receiver on loopback and synthetic labelled traffic."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler
from typing import Any

import numpy as np
from sqlalchemy import insert
from sqlalchemy.orm import Session

from monitor.db.models import Generation
from monitor.db.types import uuid7
from monitor.tasks.repository import ensure_tasks
from tests.support.servers import serve_handler


@dataclass
class Receiver:
    """Records every request and when it arrived (epoch seconds); answers with the
    next scripted status (last one repeats), after the next scripted delay (then none)."""

    statuses: list[int] = field(default_factory=lambda: [200])
    delays: list[float] = field(default_factory=list)
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    arrived: list[float] = field(default_factory=list)
    url: str = ""

    def next_status(self) -> int:
        return self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]


@contextmanager
def webhook_receiver(
    statuses: list[int] | None = None, delays: list[float] | None = None
) -> Iterator[Receiver]:
    receiver = Receiver(statuses=list(statuses or [200]), delays=list(delays or []))
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            with lock:
                receiver.arrived.append(time.time())
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = receiver.next_status()
                delay = receiver.delays.pop(0) if receiver.delays else 0.0
            time.sleep(delay)
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    with serve_handler(Handler) as url:
        receiver.url = url
        yield receiver


def add_generations(
    session: Session,
    task: str,
    confidences: Any,
    labels: Any | None,
    *,
    now: datetime,
    spread: timedelta = timedelta(hours=1),
    version: int | None = None,
    rescored_version: int | None = None,
    rescored: Any | None = None,
    **columns: Any,
) -> None:
    """Insert generations created in (now - spread, now) with the given confidences."""
    ensure_tasks(session, [task])
    conf = np.asarray(confidences, dtype=float)
    n = conf.shape[0]
    offsets = np.linspace(1.0, spread.total_seconds() - 1.0, n) if n > 1 else [1.0]
    rows = []
    for i in range(n):
        row: dict[str, Any] = {
            "id": uuid7(),
            "task": task,
            "created_at": now - timedelta(seconds=float(offsets[i])),
            "endpoint": "chat",
            "stream": False,
            "partial": False,
            "token_count": 20,
            "temperature": 1.0,
            "confidence": float(conf[i]),
            "raw_confidence": float(conf[i]),
            "calibration_version": version,
            "rescored_version": rescored_version,
            "rescored_confidence": None if rescored is None else float(rescored[i]),
            "label": None if labels is None else float(labels[i]),
            "labelled_at": None if labels is None else now,
        }
        row.update(columns)
        rows.append(row)
    for start in range(0, n, 2000):
        session.execute(insert(Generation), rows[start : start + 2000])
    session.flush()


def overconfident(n: int, accuracy: float = 0.6, confidence: float = 0.9) -> tuple[Any, Any]:
    labels = np.zeros(n)
    labels[: round(n * accuracy)] = 1.0
    return np.full(n, confidence), labels


def calibrated(n: int, seed: int = 0) -> tuple[Any, Any]:
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0.3, 0.95, n)
    return conf, (rng.random(n) < conf).astype(float)
