"""The recorder's inserts: one transaction per batch, bad rows retried one by one.

Shared by the recorder's writer thread (spool replay, and batches when no
writer process runs) and by the writer process (`writer_process.py`), so rows
reach the database the same way whichever of the two writes them.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session, sessionmaker

from monitor.db.dialect import insert_ignoring_conflicts
from monitor.db.models import Feedback
from monitor.db.session import session_scope
from monitor.errors import first_line
from monitor.generations import repository as generations
from monitor.proxy.records import (
    FeedbackRecord,
    GenerationRecord,
    generation_from_spool,
    generation_row,
)
from monitor.proxy.spool import FEEDBACK, GENERATION, Entry
from monitor.tasks.repository import ensure_tasks

log = logging.getLogger(__name__)


def is_unavailable(exc: BaseException) -> bool:
    """True when the database could not be reached, as opposed to refusing a row."""
    if isinstance(exc, OperationalError | InterfaceError | PoolTimeoutError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def pack(records: Sequence[GenerationRecord]) -> tuple[list[Entry], int]:
    """Generation entries for `records`, and how many could not be packed (logged, skipped)."""
    entries: list[Entry] = []
    invalid = 0
    for record in records:
        try:
            entries.append((GENERATION, generation_row(record)))
        except Exception:
            log.exception("generation %s could not be packed; dropped", record.id)
            invalid += 1
    return entries, invalid


class RowWriter:
    """Commits spool-shaped entries through `sessions`."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def commit(self, entries: Sequence[Entry]) -> int:
        """Insert entries in order in one transaction; fall back to one by one on bad rows.

        Returns how many rows the database refused (logged and dropped). Raises
        SQLAlchemyError when the database is unavailable (`is_unavailable`).
        """
        rejected = 0
        try:
            self._insert(entries)
        except SQLAlchemyError as exc:
            # A refused row alone in its batch is retried once, dropped and counted
            # like any other: raised, it would be spooled and fail every replay,
            # and everything spooled after it would wait behind it.
            if is_unavailable(exc):
                raise
            log.warning("batch refused (%s); retrying row by row", first_line(exc))
            for entry in entries:
                try:
                    self._insert([entry])
                except SQLAlchemyError as row_exc:
                    if is_unavailable(row_exc):
                        raise
                    log.error(
                        "row %s refused, dropped: %s", entry[1].get("id"), first_line(row_exc)
                    )
                    rejected += 1
        # Feedback may have committed between our read and our commit: look again.
        generation_ids = [_uuid(row["id"]) for kind, row in entries if kind == GENERATION]
        if generation_ids:
            try:
                with session_scope(self.sessions) as session:
                    early = generations.ids_with_feedback(session, generation_ids)
                    generations.relabel(session, early)
            except SQLAlchemyError as exc:
                log.warning("relabelling after insert failed: %s", first_line(exc))
        return rejected

    def _insert(self, entries: Sequence[Entry]) -> None:
        with session_scope(self.sessions) as session:
            relabel: set[uuid.UUID] = set()
            for kind, rows in _runs(entries):
                if kind == GENERATION:
                    values = [generation_from_spool(row) for row in rows]
                    ensure_tasks(session, {row["task"] for row in values})
                    generations.insert_generations(session, values)
                    relabel |= generations.ids_with_feedback(session, [v["id"] for v in values])
                elif kind == FEEDBACK:
                    feedback = [FeedbackRecord.from_row(row).to_row() for row in rows]
                    insert_ignoring_conflicts(session, Feedback, feedback)
                    relabel |= {row["generation_id"] for row in feedback}
            generations.relabel(session, relabel)


def _runs(entries: Sequence[Entry]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Consecutive entries of one kind, so each run is one multi-row insert, order kept."""
    runs: list[tuple[str, list[dict[str, Any]]]] = []
    for kind, row in entries:
        if runs and runs[-1][0] == kind:
            runs[-1][1].append(row)
        else:
            runs.append((kind, [row]))
    return runs


def _uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
