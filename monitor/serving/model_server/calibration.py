"""Per-task calibration table that Thermostat pushes into the model server.

Thermostat activates a fitted temperature with ``PUT /admin/calibration``. The
server only needs it when a task opts into ``apply_to_sampling``: sampling logits
are then divided by the task's temperature, so the model samples from its
calibrated distribution. Reported logprobs stay raw either way, because the
monitor fits on raw logprobs and must never see its own correction fed back.

The table is immutable and replaced whole (copy, modify, swap one reference), so a
request that read it at its start keeps a consistent view to its end, and readers
never take a lock.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Same rule as the proxy's task names (CONTRACT.md).
TASK_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
DEFAULT_TASK = "default"
TASK_HEADER = "X-Thermostat-Task"


class TaskCalibration(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    temperature: float = Field(gt=0, allow_inf_nan=False)
    version: int | None = None
    apply_to_sampling: bool = False


class TaskCalibrationUpdate(TaskCalibration):
    """Body of a single-task PUT: the entry plus the task it belongs to."""

    task: str = Field(pattern=TASK_PATTERN)

    def entry(self) -> TaskCalibration:
        return TaskCalibration(**self.model_dump(exclude={"task"}))


class CalibrationTable(BaseModel):
    """Body of a full-table PUT, and the shape GET returns."""

    model_config = ConfigDict(extra="forbid")

    tasks: dict[str, TaskCalibration]

    @field_validator("tasks")
    @classmethod
    def _task_names(cls, tasks: dict[str, TaskCalibration]) -> dict[str, TaskCalibration]:
        bad = [name for name in tasks if not re.fullmatch(TASK_PATTERN, name)]
        if bad:
            raise ValueError(f"invalid task name(s): {', '.join(sorted(bad))}")
        return tasks


class CalibrationStore:
    """Holds the current table; writes are serialised, reads are a reference load."""

    def __init__(self) -> None:
        self._table: Mapping[str, TaskCalibration] = MappingProxyType({})
        self._write_lock = threading.Lock()

    def snapshot(self) -> Mapping[str, TaskCalibration]:
        """The table as of now; later swaps do not change the returned mapping."""
        return self._table

    def set_task(self, task: str, entry: TaskCalibration) -> Mapping[str, TaskCalibration]:
        with self._write_lock:
            new = dict(self._table)
            new[task] = entry
            self._table = MappingProxyType(new)
            return self._table

    def replace(self, tasks: Mapping[str, TaskCalibration]) -> Mapping[str, TaskCalibration]:
        with self._write_lock:
            self._table = MappingProxyType(dict(tasks))
            return self._table

    @staticmethod
    def as_json(table: Mapping[str, TaskCalibration]) -> dict[str, Any]:
        return {"tasks": {name: entry.model_dump() for name, entry in sorted(table.items())}}


def sampling_divisor(table: Mapping[str, TaskCalibration], task: str) -> float | None:
    """The temperature to divide sampling logits by for this task, if any."""
    entry = table.get(task)
    if entry is None or not entry.apply_to_sampling:
        return None
    return entry.temperature


class DivideLogits:
    """Logits processor applying a task's calibration temperature to sampling."""

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature

    def __call__(self, logits: Any) -> Any:
        return logits / self.temperature
