"""Pack and insert generation batches in a separate process.

Why: the proxy serves from one event loop and the recorder's writer is a
thread of the same process, so packing arrays, computing signals and running
SQLAlchemy's inserts (about a fifth of the CPU per proxied request) compete
with the request path for the GIL. A child process does that work on another
core; the writer thread only hands it each batch and waits, without the GIL.
The hand-off itself (pickling the batch, in a thread of the parent) does hold
the GIL, so records pickle their arrays as raw bytes
(`GenerationRecord.__reduce__`): a batch of ~150 took 2.6 to 3.9 ms with
numpy's own reduce, during which the event loop could not run.

The child is a `ProcessPoolExecutor` of one (spawned, so no locks or
connections are inherited). It runs at a lower CPU priority (`writer_nice`):
its work is never urgent, the request path's always is, and where both wait
for one core the request path goes first. It ignores SIGINT/SIGTERM: the
parent decides when it stops, after the last batch; and it exits when the
parent dies (even by SIGKILL), which a pool worker would not notice by
itself. Its answer for a batch is a `BatchOutcome`; when the database is
unreachable it hands the packed rows back for the parent to spool. If the
child dies, `write` answers None and the caller writes that batch itself; a
new child is started for later batches, at most once per
`RESTART_INTERVAL_S`. Nothing is lost either way: the parent keeps every
record until the child has answered.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from monitor.db.engine import build_engine
from monitor.db.session import make_session_factory
from monitor.errors import first_line
from monitor.logging import setup_logging
from monitor.proxy.records import GenerationRecord
from monitor.proxy.row_writer import RowWriter, is_unavailable, pack
from monitor.proxy.spool import Entry

log = logging.getLogger(__name__)

RESTART_INTERVAL_S = 30.0
_ANSWER_TIMEOUT_S = 300.0  # a batch insert that takes longer than this is a hung child


@dataclass
class BatchOutcome:
    written: int = 0
    invalid: int = 0  # records that could not be packed (dropped, as in-process)
    rejected: int = 0  # rows the database refused (dropped, as in-process)
    # Set when the database could not be reached: why, and the packed rows to spool.
    unavailable: str | None = None
    unwritten: list[Entry] = field(default_factory=list)


def database_url(sessions: sessionmaker[Session]) -> str | None:
    """The URL the recorder's sessions connect to; None where a child cannot share it."""
    bind = sessions.kw.get("bind")
    url = getattr(bind, "url", None)
    if url is None:
        return None
    if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
        return None  # an in-memory database exists only in this process
    return str(url.render_as_string(hide_password=False))


class WriterProcess:
    """The child that packs and inserts batches (see module docstring)."""

    def __init__(self, url: str, log_level: str, nice: int = 0) -> None:
        self.url = url
        self.log_level = log_level
        self.nice = nice
        self._pool: ProcessPoolExecutor | None = None
        self._broken_at = -RESTART_INTERVAL_S

    def write(self, records: Sequence[GenerationRecord]) -> BatchOutcome | None:
        """Pack and insert in the child; None when no child can take the batch now."""
        try:
            pool = self._ensure_pool()
            if pool is None:
                return None
            return pool.submit(_write_batch, list(records)).result(_ANSWER_TIMEOUT_S)
        except (BrokenProcessPool, TimeoutError, OSError) as exc:  # OSError: cannot spawn
            log.error(
                "recorder writer process failed (%s: %s); writing in-process",
                type(exc).__name__,
                exc,
            )
            self._discard_pool()
            return None

    def stop(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _ensure_pool(self) -> ProcessPoolExecutor | None:
        if self._pool is None and time.monotonic() - self._broken_at >= RESTART_INTERVAL_S:
            self._pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_child,
                initargs=(self.url, self.log_level, self.nice),
            )
        return self._pool

    def _discard_pool(self) -> None:
        self._broken_at = time.monotonic()
        pool, self._pool = self._pool, None
        if pool is not None:
            # A hung child would outlive the pool: kill it (no public API for that).
            processes = list((getattr(pool, "_processes", None) or {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            for process in processes:
                process.kill()


# --- in the child ------------------------------------------------------------------

_sessions: sessionmaker[Session] | None = None


def _init_child(url: str, log_level: str, nice: int) -> None:
    global _sessions
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    setup_logging(log_level)
    lower_priority(nice)
    threading.Thread(target=_exit_with_parent, name="parent-watch", daemon=True).start()

    _sessions = make_session_factory(build_engine(url, application_name="thermostat-recorder"))


def lower_priority(nice: int) -> None:
    """Raise this process's nice value by `nice`; where that is refused, say so and go on."""
    if not nice:
        return
    try:
        os.nice(nice)  # lowering one's own priority needs no privilege...
    except OSError as exc:  # ...but a sandbox may refuse it: the writer still works
        log.warning("writer process keeps its priority (nice +%d refused: %s)", nice, exc)


def _exit_with_parent() -> None:
    parent = multiprocessing.parent_process()
    if parent is not None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(0)  # the parent is gone: nobody is left to answer


def _write_batch(records: list[GenerationRecord]) -> BatchOutcome:
    assert _sessions is not None, "writer process not initialised"
    outcome = BatchOutcome()
    entries, outcome.invalid = pack(records)
    if not entries:
        return outcome
    try:
        outcome.rejected = RowWriter(_sessions).commit(entries)
    except SQLAlchemyError as exc:
        if not is_unavailable(exc):
            raise
        outcome.unavailable = first_line(exc)
        outcome.unwritten = entries
        return outcome
    outcome.written = len(entries) - outcome.rejected
    return outcome
