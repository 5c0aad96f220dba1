"""The in-memory calibration table every proxy process serves from.

A request reads one immutable snapshot (a dict swapped by reference), so a
hot-swap never changes the parameters of a request already in flight, and no
lock is taken on the hot path. The hot-swap listener calls `replace`.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


@dataclass(frozen=True, slots=True)
class CalibrationEntry:
    task: str
    calibration_id: int
    version: int
    temperature: float
    method: str = "temperature"


IDENTITY_TEMPERATURE = 1.0


class CalibrationTable:
    def __init__(self) -> None:
        self._entries: MappingProxyType[str, CalibrationEntry] = MappingProxyType({})
        self.generation = 0  # bumped on every swap; tests and metrics read it

    def snapshot(self) -> MappingProxyType[str, CalibrationEntry]:
        return self._entries

    def get(self, task: str) -> CalibrationEntry | None:
        return self._entries.get(task)

    def replace(self, entries: dict[str, CalibrationEntry]) -> bool:
        """Swap in a new table; returns whether anything changed."""
        if dict(self._entries) == entries:
            return False
        self._entries = MappingProxyType(dict(entries))
        self.generation += 1
        return True

    def load(self, session: Session) -> bool:
        return self.replace(load_active_calibrations(session))


def load_active_calibrations(session: Session) -> dict[str, CalibrationEntry]:
    # Imported here: the proxy imports this module, and the table itself needs no database.
    from monitor.calibrations.repository import active_calibrations

    return {
        row.task: CalibrationEntry(
            task=row.task,
            calibration_id=row.id,
            version=row.version,
            temperature=row.temperature,
            method=row.method,
        )
        for row in active_calibrations(session)
    }
