"""What the proxy hands the recorder: plain records, cheap to build on the request path.

A `GenerationRecord` carries everything the proxy knows about one answer,
field for field the `generations` columns, except that the per-token arrays
are still raw numpy arrays: packing them (and the label-free signals that are
not needed for the response) is the writer's job, off the request path.
`FeedbackRecord` is one feedback row, built before it is written so that its
id is fixed up front and a spooled copy replays idempotently.

`generation_row` / `FeedbackRecord.to_row` turn records into the exact column
dictionaries the writer inserts and the spool stores.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from operator import attrgetter
from typing import Any

import numpy as np
import numpy.typing as npt

from monitor.calibration.packing import pack_token_logprobs
from monitor.db.types import as_json, storable_text, utcnow, uuid7

# Text columns of `generations` and their widths (None: unbounded). Past a width,
# or with a NUL, Postgres refuses the row, and the generation would be lost.
_TEXT_WIDTHS = {"model": 256, "endpoint": 16, "finish_reason": 32, "response_text": None}
_MAX_COUNT = 2**31 - 1  # INTEGER columns; SQLite and the spool overflow further on
REPETITION_NGRAM = 3


@dataclass(slots=True)
class GenerationRecord:
    """One proxied answer; `id` is what the client receives as the generation id."""

    task: str
    id: uuid.UUID = field(default_factory=uuid7)
    created_at: datetime = field(default_factory=utcnow)
    model: str | None = None
    endpoint: str = "chat"
    stream: bool = False
    partial: bool = False
    prompt: Any | None = None
    prompt_sha256: str | None = None
    response_text: str | None = None
    response_sha256: str | None = None
    finish_reason: str | None = None
    token_count: int = 0
    prompt_tokens: int | None = None
    upstream_status: int | None = None
    latency_ms: float | None = None
    overhead_ms: float | None = None
    sampling: dict[str, Any] | None = None
    top_k: int | None = None
    # Raw arrays (laid out as `captured.py` says); packed by the writer, not on the request path.
    chosen: npt.NDArray[np.float32] | None = None
    top: npt.NDArray[np.float32] | None = None
    chosen_rank: npt.NDArray[np.int8] | None = None
    answer_start: int | None = None
    answer_end: int | None = None
    # Label-free signals; the writer fills them from the arrays / text when left None.
    top_margin: float | None = None
    repetition: float | None = None
    raw_confidence: float | None = None
    confidence: float | None = None
    temperature: float = 1.0
    calibration_version: int | None = None

    def __reduce__(self) -> tuple[Any, tuple[tuple[Any, ...]]]:
        """Pickle (to the writer process) with the arrays as raw bytes.

        A numpy array pickles through its own reduce (~10 us each, three per
        record), and the recorder hands whole batches over in a thread that holds
        the GIL the event loop needs: as bytes, a batch takes well under half the
        time. The id goes as its 16 bytes for the same reason.
        """
        values = list(_FIELD_VALUES(self))
        values[_ID] = self.id.bytes
        for i in _ARRAYS:
            if isinstance(values[i], np.ndarray):
                values[i] = (values[i].dtype.str, values[i].shape, values[i].tobytes())
        return _unpickle_generation, (tuple(values),)


_FIELDS = [f.name for f in fields(GenerationRecord)]
_FIELD_VALUES = attrgetter(*_FIELDS)
_ID = _FIELDS.index("id")
_ARRAYS = [_FIELDS.index(name) for name in ("chosen", "top", "chosen_rank")]


def _unpickle_generation(values: tuple[Any, ...]) -> GenerationRecord:
    """`GenerationRecord.__reduce__`'s inverse (in the writer process)."""
    unpacked = list(values)
    unpacked[_ID] = uuid.UUID(bytes=values[_ID])
    for i in _ARRAYS:
        if isinstance(values[i], tuple):  # (dtype, shape, data) from __reduce__
            dtype, shape, data = values[i]
            unpacked[i] = np.frombuffer(data, dtype).reshape(shape)
    return GenerationRecord(*unpacked)


@dataclass(slots=True)
class FeedbackRecord:
    """One feedback row; `label` holds the label (0/1) or the score, `kind` says which."""

    generation_id: uuid.UUID
    label: float
    kind: str = "label"
    source: str = "user"
    comment: str | None = None
    idempotency_key: str | None = None
    request_sha256: str | None = None
    id: uuid.UUID = field(default_factory=uuid7)
    created_at: datetime = field(default_factory=utcnow)

    def to_row(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> FeedbackRecord:
        values = dict(row)
        values["id"] = _as_uuid(values["id"])
        values["generation_id"] = _as_uuid(values["generation_id"])
        return cls(**values)


def sha256_text(text: str | bytes) -> str:
    data = text.encode("utf-8") if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()


def top_margin(top: npt.NDArray[Any] | None) -> float | None:
    """Mean margin between the top-1 and top-2 logprob over positions that have both."""
    if top is None or top.ndim != 2 or top.shape[1] < 2 or top.shape[0] == 0:
        return None
    first = top[:, 0].astype(np.float64)
    second = top[:, 1].astype(np.float64)
    ok = np.isfinite(first) & np.isfinite(second)
    if not ok.any():
        return None
    return float(np.mean(first[ok] - second[ok]))


def repetition_rate(text: str | None, n: int = REPETITION_NGRAM) -> float | None:
    """Share of the answer's word n-grams that repeat an earlier one (0 = none, ->1 = loops)."""
    if text is None:
        return None
    words = text.split()
    total = len(words) - n + 1
    if total <= 0:
        return 0.0
    distinct = set(zip(*(words[i:] for i in range(n)), strict=False))  # the n-grams, in C
    return 1.0 - len(distinct) / total


def generation_row(record: GenerationRecord) -> dict[str, Any]:
    """The `generations` row for a record: arrays packed, signals filled, values storable.

    Runs in the writer; raises ValueError for arrays that cannot be packed.
    Whatever the upstream sent, the row is one both databases (and the spool)
    accept: one odd value must not cost the generation, or a whole batch.
    """
    logprobs: bytes | None = None
    positions = 0 if record.chosen is None else len(record.chosen)
    if record.chosen is not None and record.top is not None and record.chosen_rank is not None:
        logprobs = pack_token_logprobs(record.chosen, record.top, record.chosen_rank)
    margin = record.top_margin if record.top_margin is not None else top_margin(record.top)
    repetition = record.repetition
    if repetition is None:
        repetition = repetition_rate(record.response_text)
    row: dict[str, Any] = {
        "id": record.id,
        "task": record.task,
        "created_at": record.created_at,
        "model": record.model,
        "endpoint": record.endpoint,
        "stream": record.stream,
        "partial": record.partial,
        "prompt": as_json(record.prompt) if record.prompt is not None else None,
        "prompt_sha256": record.prompt_sha256,
        "response_text": record.response_text,
        "response_sha256": record.response_sha256,
        "finish_reason": record.finish_reason,
        "token_count": _count(int(record.token_count)) or positions,
        "prompt_tokens": _count(record.prompt_tokens),
        "upstream_status": record.upstream_status,
        "latency_ms": _finite(record.latency_ms),
        "overhead_ms": _finite(record.overhead_ms),
        "sampling": as_json(record.sampling) if record.sampling is not None else None,
        "top_k": record.top_k,
        "logprobs": logprobs,
        "answer_start": record.answer_start,
        "answer_end": record.answer_end,
        "top_margin": _finite(margin),
        "repetition": _finite(repetition),
        "raw_confidence": _finite(record.raw_confidence),
        "confidence": _finite(record.confidence),
        "temperature": float(record.temperature),
        "calibration_version": record.calibration_version,
    }
    for column, width in _TEXT_WIDTHS.items():
        value = row[column]
        if isinstance(value, str):
            row[column] = storable_text(value)[:width]
    return row


def _count(value: int | None) -> int | None:
    """A usage count as the INTEGER columns hold it; absurd upstream numbers are unknown."""
    return value if value is not None and 0 <= value <= _MAX_COUNT else None


def generation_from_spool(row: dict[str, Any]) -> dict[str, Any]:
    """A spooled generation row back into insertable values (msgpack keeps ids as text)."""
    values = dict(row)
    values["id"] = _as_uuid(values["id"])
    return values


def _as_uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def _finite(value: float | None) -> float | None:
    """NaN and infinities do not survive every driver and JSON; store them as unknown."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None
