"""The recorder: a bounded queue on the request path, one writer thread behind it.

The request path only calls `submit()`, a non-blocking put; what does not fit
is dropped, counted and logged (rate-limited), never silently. One writer
thread drains the queue in batches (`batch_size` or `flush_interval_s`,
whichever comes first); each batch is packed and inserted with ON CONFLICT DO
NOTHING, by default in a writer process (`writer_process.py`: off the GIL the
request path needs), else in the thread itself. A thread, not an asyncio task:
the database calls are synchronous SQLAlchemy and must never stall the event
loop that serves requests.

When the database is unavailable a batch goes to the spool (`spool.py`,
fsynced) and is replayed, oldest first, every `replay_interval_s` once the
database answers again; while anything is spooled, new batches queue up behind
it in the spool so rows reach the database in order. Rows the database refuses
for their content (not its availability) are retried one by one and only the
bad ones are dropped, so one bad row never poisons a batch or the spool.

The recorder claims its spool folder (`claim_spool`) before it reads it and
lets go when it stops, so a second process on the same folder is refused
instead of deleting this one's rows. `thermostat serve` claims it once more
before binding, for the life of the process, so the refusal is one line and a
record spooled by a request finishing after `stop()` is still covered.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from monitor.errors import first_line
from monitor.proxy.metrics import ProxyMetrics, proxy_metrics
from monitor.proxy.records import FeedbackRecord, GenerationRecord
from monitor.proxy.row_writer import RowWriter, is_unavailable, pack
from monitor.proxy.spool import (
    FEEDBACK,
    GENERATION,
    Entry,
    Spool,
    SpoolClaim,
    SpooledFeedback,
    claim_spool,
)
from monitor.proxy.writer_process import BatchOutcome, WriterProcess, database_url
from monitor.runtime import Runtime
from monitor.settings import RecorderSettings

log = logging.getLogger(__name__)

EXTRAS_KEY = "recorder"
DROP_LOG_INTERVAL_S = 10.0
STOP_TIMEOUT_S = 60.0
_STOP_POLL_S = 0.05


class Recorder:
    name = "recorder"

    def __init__(
        self,
        settings: RecorderSettings,
        sessions: sessionmaker[Session],
        spool_dir: Path,
        metrics: ProxyMetrics,
        *,
        recent_ids: int | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.metrics = metrics
        self._process: WriterProcess | None = None
        self._claim: SpoolClaim = claim_spool(spool_dir, settings.spool_claim_wait_s)
        try:
            self.spool = Spool(spool_dir, settings.spool_max_bytes)
        except BaseException:
            self._claim.release()
            raise
        self._queue: queue.Queue[GenerationRecord] = queue.Queue(maxsize=settings.queue_size)
        # Keyed by the id's int: a UUID is a GC-tracked object, an int is not, and
        # up to 50,000 tracked keys here made every full collection of the api
        # process walk them: ~8 ms pauses of the event loop, against ~3 without.
        self._recent: OrderedDict[int, None] = OrderedDict()
        self._recent_max = recent_ids or max(2 * settings.queue_size, 50_000)
        self._recent_lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_replay = 0.0
        self._drops_unlogged = 0
        self._last_drop_log = 0.0
        metrics.queue_depth.set_function(self._queue.qsize)
        metrics.spool_bytes.set_function(lambda: self.spool.bytes)

    @property
    def rows(self) -> RowWriter:
        """Inserts through the current `sessions` (tests swap them to simulate outages)."""
        return RowWriter(self.sessions)

    # --- request path ----------------------------------------------------------

    def submit(self, record: GenerationRecord) -> bool:
        """Queue a record without blocking; False (counted, logged) when it was dropped."""
        if self._thread is None or not self._thread.is_alive():
            # Not running (stopped, or a request finishing during shutdown): keep
            # the row durably; the next start replays it.
            return self._spool_directly(record)
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._drop("queue_full")
            return False
        self._remember(record.id)
        return True

    def is_pending(self, generation_id: uuid.UUID) -> bool:
        """Whether the id was recently submitted (queued, being written, spooled or written)."""
        with self._recent_lock:
            if generation_id.int in self._recent:
                return True
        return self.spool.holds_generation(generation_id)

    def spool_feedback(self, record: FeedbackRecord) -> bool:
        """Durably keep feedback while the database is down; False if the spool is full."""
        if self.spool.append([(FEEDBACK, record.to_row())]) == 0:
            self._drop("spool_full")
            return False
        self.metrics.spooled_total.labels(kind=FEEDBACK).inc()
        return True

    def spooled_feedback(self, idempotency_key: str) -> SpooledFeedback | None:
        return self.spool.feedback_for_key(idempotency_key)

    def _remember(self, generation_id: uuid.UUID) -> None:
        with self._recent_lock:
            self._recent[generation_id.int] = None
            while len(self._recent) > self._recent_max:
                self._recent.popitem(last=False)

    def _spool_directly(self, record: GenerationRecord) -> bool:
        if self._spool_records([record]) == 0:
            return False
        self._remember(record.id)
        return True

    def _spool_records(self, records: Sequence[GenerationRecord]) -> int:
        """Spool records the writer could not write; how many were kept, never raises.

        Its callers are the writer thread's last resort and `submit` while the
        thread is not running: an error here (a full disk) is counted and logged,
        so it neither ends the thread nor reaches a request.
        """
        try:
            entries = self._pack(records)
            return self._spool_entries(entries) if entries else 0
        except Exception:
            log.exception("%d record(s) could not be spooled either; lost", len(records))
            self._drop("spool_error", len(records))
            return 0

    def _pack(self, records: Sequence[GenerationRecord]) -> list[Entry]:
        entries, invalid = pack(records)
        if invalid:
            self._drop("invalid", invalid)
        return entries

    def _drop(self, reason: str, count: int = 1) -> None:
        self.metrics.dropped_total.labels(reason=reason).inc(count)
        self._drops_unlogged += count
        now = time.monotonic()
        if now - self._last_drop_log >= DROP_LOG_INTERVAL_S:
            log.warning(
                "recorder dropped %d record(s) (latest reason: %s); see "
                "thermostat_recorder_dropped_total",
                self._drops_unlogged,
                reason,
            )
            self._drops_unlogged = 0
            self._last_drop_log = now

    # --- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        self._stopping.clear()
        url = database_url(self.sessions) if self.settings.writer_process else None
        if url is not None:
            level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
            self._process = WriterProcess(url, level, self.settings.writer_nice)
        self._thread = threading.Thread(target=self._run, name="thermostat-recorder", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Flush everything queued (to the database or the spool), then end the writer."""
        self._stopping.set()
        thread = self._thread
        if thread is not None:
            await asyncio.to_thread(thread.join, STOP_TIMEOUT_S)
            if thread.is_alive():
                log.error("recorder writer did not finish within %ss", STOP_TIMEOUT_S)
        self._thread = None
        if self._process is not None:
            await asyncio.to_thread(self._process.stop)
            self._process = None
        # Anything that slipped in after the writer's last look goes to the spool.
        leftovers = self._take(self._queue.qsize())
        self._spool_records(leftovers)
        for _ in leftovers:
            self._queue.task_done()
        self.spool.close()
        self._claim.release()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until every submitted record has been written or spooled (for tests)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    # --- writer thread ---------------------------------------------------------

    def _run(self) -> None:
        while True:
            batch = self._collect()
            try:
                if batch:
                    self._flush(batch)
            except Exception:  # the writer must outlive any bug in one batch
                log.exception("recorder writer failed on a batch of %d; spooling it", len(batch))
                self._spool_records(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()
            try:
                if self.spool.has_data() and time.monotonic() >= self._next_replay:
                    self.replay()
            except Exception:
                log.exception("spool replay failed; will retry")
            if self._stopping.is_set() and self._queue.empty():
                return

    def _collect(self) -> list[GenerationRecord]:
        interval = self.settings.flush_interval_s
        first = self._get(time.monotonic() + interval)
        if first is None:
            return []
        # Let the batch fill without taking records one by one: a writer blocked
        # in queue.get() is woken by every put, and those wake-ups cost the request
        # path ~15% of its CPU (GIL hand-offs) under load. Sleep in short slices
        # instead and drain at once when the batch is full or the interval is up.
        deadline = time.monotonic() + interval
        wanted = self.settings.batch_size - 1
        while self._queue.qsize() < wanted and not self._stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._stopping.wait(min(remaining, _STOP_POLL_S))
        return [first, *self._take(wanted)]

    def _get(self, deadline: float) -> GenerationRecord | None:
        """Next record before `deadline`; waits in short slices so `stop()` is noticed."""
        while True:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0 or self._stopping.is_set():
                    return self._queue.get_nowait()
                return self._queue.get(timeout=min(remaining, _STOP_POLL_S))
            except queue.Empty:
                if remaining <= 0 or self._stopping.is_set():
                    return None

    def _take(self, count: int) -> list[GenerationRecord]:
        taken: list[GenerationRecord] = []
        for _ in range(count):
            try:
                taken.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return taken

    def _flush(self, batch: Sequence[GenerationRecord]) -> None:
        if self.spool.has_data() and time.monotonic() >= self._next_replay:
            self.replay()
        if self._process is not None and not self.spool.has_data():
            outcome = self._process.write(batch)
            if outcome is not None:
                self._account(outcome)
                return
        entries = self._pack(batch)
        if not entries:
            return
        if self.spool.has_data():
            self._spool_entries(entries)  # stay behind what is already spooled
            return
        try:
            rejected = self.rows.commit(entries)
        except SQLAlchemyError as exc:
            if not is_unavailable(exc):
                raise
            self._spool_unavailable(first_line(exc), entries)
            return
        self._account(BatchOutcome(written=len(entries) - rejected, rejected=rejected))

    def _account(self, outcome: BatchOutcome) -> None:
        """Metrics and spooling for a batch that was packed and sent to the database."""
        if outcome.invalid:
            self._drop("invalid", outcome.invalid)
        if outcome.rejected:
            self._drop("rejected", outcome.rejected)
        if outcome.unavailable is not None:
            self._spool_unavailable(outcome.unavailable, outcome.unwritten)
        elif outcome.written:
            self.metrics.written_total.labels(kind=GENERATION).inc(outcome.written)

    def _spool_unavailable(self, reason: str, entries: Sequence[Entry]) -> None:
        log.warning("database unavailable (%s); spooling %d rows", reason, len(entries))
        self._next_replay = time.monotonic() + self.settings.replay_interval_s
        self._spool_entries(entries)

    def _spool_entries(self, entries: Sequence[Entry]) -> int:
        kept = self.spool.append(entries)
        if kept:
            self.metrics.spooled_total.labels(kind=GENERATION).inc(kept)
        if kept < len(entries):
            self._drop("spool_full", len(entries) - kept)
        return kept

    def replay(self) -> int:
        """Replay spooled segments oldest first; return rows replayed. Writer thread only."""
        self._next_replay = time.monotonic() + self.settings.replay_interval_s
        if not self._database_answers():
            return 0
        replayed = 0
        for path in self.spool.sealed_segments():
            entries = self.spool.read(path)
            try:
                rejected = self.rows.commit(entries)
            except SQLAlchemyError as exc:
                if not is_unavailable(exc):
                    raise
                log.warning("spool replay paused: %s", first_line(exc))
                return replayed
            if rejected:
                self._drop("rejected", rejected)
            self.spool.discard(path, entries)
            for kind in (GENERATION, FEEDBACK):
                count = sum(1 for k, _ in entries if k == kind)
                if count:
                    self.metrics.replayed_total.labels(kind=kind).inc(count)
            replayed += len(entries)
        if replayed:
            log.info("replayed %d spooled rows", replayed)
        return replayed

    def _database_answers(self) -> bool:
        try:
            with self.sessions() as session:
                session.execute(text("SELECT 1"))
            return True
        except SQLAlchemyError:
            return False


def create_recorder(runtime: Runtime) -> Recorder:
    """Service factory for the API role; the recorder is shared via `runtime.extras`."""
    recorder = Recorder(
        runtime.settings.recorder,
        runtime.sessions,
        runtime.settings.spool_dir,
        proxy_metrics(runtime),
    )
    runtime.extras[EXTRAS_KEY] = recorder
    return recorder


def get_recorder(runtime: Runtime) -> Recorder | None:
    recorder = runtime.extras.get(EXTRAS_KEY)
    return recorder if isinstance(recorder, Recorder) else None
