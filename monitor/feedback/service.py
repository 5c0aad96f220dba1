"""Writing feedback: durable before acknowledged, idempotent, label cache kept current.

Each request is one unit of work: every item is checked (idempotency key,
known generation) and written in one transaction, and only a commit counts
as an acknowledgement. When the database is unreachable the items go to the
recorder's fsynced spool instead (ids generated here, so the replay inserts
exactly these rows); the generation cannot be checked then, so feedback is
accepted for any id rather than lost.

Feedback may precede its generation row (still in the recorder's queue): it
is accepted when `recorder.is_pending(id)`. Behind a load balancer it may
also reach another api process than the one that served the answer, whose
queue this process cannot see: an id that such a process may still be
recording (`may_be_in_flight`) is looked up again for a short while before
it is called unknown (`wait_for_other_processes`). Label consistency with the
writer follows "write, commit, then look again": after committing feedback
whose generation row was missing, the label is recomputed once more, and the
writer does the same after committing generations, so one of the two always
sees the other's committed rows.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from monitor.db.models import Feedback
from monitor.db.session import session_scope
from monitor.db.types import uuid7_unix_ms
from monitor.errors import (
    ConflictError,
    DatabaseError,
    NotFoundError,
    ThermostatError,
)
from monitor.feedback import repository
from monitor.feedback.schemas import FeedbackIn, FeedbackOut
from monitor.generations import repository as generations
from monitor.proxy.metrics import ProxyMetrics
from monitor.proxy.recorder import Recorder
from monitor.proxy.records import FeedbackRecord
from monitor.proxy.row_writer import is_unavailable
from monitor.settings import RecorderSettings

log = logging.getLogger(__name__)

_LOCK_RETRIES = 3
# The oldest id feedback waits for: the proxy mints an id when the request
# arrives and records the generation when the answer ends, so this bounds how
# long an answer (a stream) may last. Older ids are answered at once.
IN_FLIGHT_HORIZON_S = 3600.0
_CLOCK_SKEW_S = 60.0  # ids minted by a host whose clock runs ahead
_POLL_S = (0.02, 0.05, 0.1, 0.2)  # then every 0.2 s until the wait is over


@dataclass(slots=True)
class Outcome:
    """The result of one item: a status and either the stored feedback or an error."""

    status: int
    feedback: FeedbackOut | None = None
    error: ThermostatError | None = None


Item = FeedbackIn | ThermostatError  # a parsed item, or why it could not be (422, 404)


class FeedbackService:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        recorder: Recorder | None,
        metrics: ProxyMetrics,
        *,
        other_processes_wait_s: float = 0.0,
    ) -> None:
        self.sessions = sessions
        self.recorder = recorder
        self.metrics = metrics
        self.other_processes_wait_s = other_processes_wait_s

    def submit(self, items: Sequence[Item]) -> list[Outcome]:
        """Write every valid item durably (database, else spool); one outcome per item."""
        valid = [item for item in items if isinstance(item, FeedbackIn)]
        results: dict[int, Outcome] = {}
        if valid:
            results = self._to_database_or_spool(valid)
        outcomes: list[Outcome] = []
        it = iter(range(len(valid)))
        for item in items:
            outcome = (
                results[next(it)]
                if isinstance(item, FeedbackIn)
                else Outcome(item.status_code, error=item)
            )
            source = item.source if isinstance(item, FeedbackIn) else "invalid"
            self.metrics.feedback_total.labels(source=source, outcome=_outcome(outcome)).inc()
            outcomes.append(outcome)
        return outcomes

    def _to_database_or_spool(self, items: list[FeedbackIn]) -> dict[int, Outcome]:
        for attempt in range(_LOCK_RETRIES):
            try:
                return self._to_database(items)
            except SQLAlchemyError as exc:
                if not is_unavailable(exc):
                    raise
                if _is_lock_contention(exc) and attempt + 1 < _LOCK_RETRIES:
                    time.sleep(0.05 * (attempt + 1))
                    continue
                log.warning("database unavailable for feedback (%s); spooling", exc.__class__)
                break
        return {index: self._to_spool(item) for index, item in enumerate(items)}

    async def wait_for_other_processes(self, items: Sequence[Item]) -> None:
        """Give generations another api process may still be recording time to land.

        Its writer commits every `flush_interval_s`, so an answer it served a
        moment ago may not be in the database yet. Only ids that could be in
        flight are waited for, once per request, for `other_processes_wait_s`
        at most; what is still missing then is answered 404 by `submit`. The
        wait sleeps on the event loop: no worker thread is held meanwhile.
        """
        if self.other_processes_wait_s <= 0:
            return
        now = time.time()
        waiting = {
            item.generation_id
            for item in items
            if isinstance(item, FeedbackIn) and may_be_in_flight(item.generation_id, now)
        }
        deadline = time.monotonic() + self.other_processes_wait_s
        pauses = itertools.chain(_POLL_S, itertools.repeat(_POLL_S[-1]))
        while waiting:
            try:
                waiting = await anyio.to_thread.run_sync(self._not_yet_recorded, waiting)
            except SQLAlchemyError as exc:
                if not is_unavailable(exc):
                    raise
                return  # `submit` meets the same outage and spools the items
            left = deadline - time.monotonic()
            if not waiting or left <= 0:
                return
            await anyio.sleep(min(next(pauses), left))

    def _not_yet_recorded(self, ids: set[uuid.UUID]) -> set[uuid.UUID]:
        """The ids neither in this process's recorder nor in the database."""
        if self.recorder is not None:
            ids = {i for i in ids if not self.recorder.is_pending(i)}
        if not ids:
            return ids
        with session_scope(self.sessions) as session:
            return ids - generations.existing_ids(session, ids)

    def _to_database(self, items: list[FeedbackIn]) -> dict[int, Outcome]:
        results: dict[int, Outcome] = {}
        missing: set[uuid.UUID] = set()
        # Committed here, not at the request edge: the commit is the acknowledgement
        # (durable before the 201), and the relabel below must follow it.
        with session_scope(self.sessions) as session:
            for index, item in enumerate(items):
                outcome, generation_missing = self._write(session, item)
                results[index] = outcome
                if generation_missing and outcome.status == 201:
                    missing.add(item.generation_id)
        if missing:
            # Look again after commit: the writer may have committed the generation meanwhile.
            try:
                with session_scope(self.sessions) as session:
                    generations.relabel(session, missing)
            except SQLAlchemyError as exc:
                log.warning("relabel after feedback commit failed: %s", exc.__class__)
        return results

    def _write(self, session: Session, item: FeedbackIn) -> tuple[Outcome, bool]:
        sha = item.request_sha256()
        if item.idempotency_key:
            previous = self._previous(session, item.idempotency_key, sha)
            if previous is not None:
                return previous, False
        exists = bool(generations.existing_ids(session, [item.generation_id], lock=True))
        if not exists and not (self.recorder and self.recorder.is_pending(item.generation_id)):
            message = f"generation {item.generation_id} not found"
            return Outcome(404, error=NotFoundError(message, field="generation_id")), False
        record = _record(item, sha)
        if not repository.insert(session, record):
            # A concurrent request with the same idempotency key committed first.
            assert item.idempotency_key is not None
            previous = self._previous(session, item.idempotency_key, sha)
            if previous is None:
                raise RuntimeError(f"feedback {record.id} neither inserted nor found")
            return previous, False
        if exists:
            generations.relabel(session, [item.generation_id])
        return Outcome(201, feedback=to_out(record)), not exists

    def _previous(self, session: Session, key: str, sha: str) -> Outcome | None:
        spooled = self.recorder.spooled_feedback(key) if self.recorder else None
        if spooled is not None:
            stored = FeedbackRecord.from_row(spooled.row)
            return _replay_or_conflict(stored, stored.request_sha256, sha, key, "spool")
        row = repository.by_idempotency_key(session, key)
        if row is None:
            return None
        return _replay_or_conflict(row, row.request_sha256, sha, key, "database")

    def _to_spool(self, item: FeedbackIn) -> Outcome:
        sha = item.request_sha256()
        if item.idempotency_key and self.recorder:
            spooled = self.recorder.spooled_feedback(item.idempotency_key)
            if spooled is not None:
                stored = FeedbackRecord.from_row(spooled.row)
                return _replay_or_conflict(
                    stored, stored.request_sha256, sha, item.idempotency_key, "spool"
                )
        record = _record(item, sha)
        if self.recorder is None or not self.recorder.spool_feedback(record):
            error = DatabaseError("database unavailable and feedback could not be spooled")
            return Outcome(503, error=error)
        return Outcome(201, feedback=to_out(record, stored="spool"))


def other_processes_wait_s(recorder: RecorderSettings) -> float:
    """How long feedback waits for another api process's writer: four of its
    flush intervals and a second, in which a healthy database commits a batch
    it has begun. Every api process is assumed to share the recorder settings."""
    return 1.0 + 4 * recorder.flush_interval_s


def may_be_in_flight(generation_id: uuid.UUID, now: float) -> bool:
    """Whether some api process may still be recording this generation.

    The proxy mints RFC 9562 v7 ids, whose first 48 bits are the Unix time in
    milliseconds at which the request arrived. Any other id (a client's v4,
    say), or one older than `IN_FLIGHT_HORIZON_S`, cannot be in flight.
    """
    minted_ms = uuid7_unix_ms(generation_id)
    if minted_ms is None:
        return False
    return now - IN_FLIGHT_HORIZON_S <= minted_ms / 1000 <= now + _CLOCK_SKEW_S


def _record(item: FeedbackIn, sha: str) -> FeedbackRecord:
    return FeedbackRecord(
        generation_id=item.generation_id,
        label=item.value,
        kind=item.kind,
        source=item.source,
        comment=item.comment,
        idempotency_key=item.idempotency_key,
        request_sha256=sha,
    )


def _replay_or_conflict(
    stored: Feedback | FeedbackRecord, stored_sha: str | None, sha: str, key: str, where: str
) -> Outcome:
    if stored_sha == sha:
        return Outcome(200, feedback=to_out(stored, stored="spool" if where == "spool" else None))
    message = f"idempotency_key {key!r} was already used with a different body"
    return Outcome(409, error=ConflictError(message, field="idempotency_key"))


def to_out(row: Feedback | FeedbackRecord, stored: Any = None) -> FeedbackOut:
    is_label = row.kind == "label"
    return FeedbackOut(
        id=row.id,
        generation_id=row.generation_id,
        label=bool(row.label >= 0.5) if is_label else None,
        score=None if is_label else float(row.label),
        source=row.source,
        comment=row.comment,
        idempotency_key=row.idempotency_key,
        created_at=row.created_at,
        stored=stored or "database",
    )


def _is_lock_contention(exc: SQLAlchemyError) -> bool:
    text = str(exc).lower()
    return any(
        marker in text for marker in ("database is locked", "database is busy", "deadlock detected")
    )


def _outcome(outcome: Outcome) -> str:
    if outcome.status == 201 and outcome.feedback is not None:
        return "spooled" if outcome.feedback.stored == "spool" else "created"
    return {
        200: "replayed",
        404: "not_found",
        409: "conflict",
        422: "invalid",
        503: "unavailable",
    }.get(outcome.status, "error")
