"""Reading one generation for the admin API: its row, unpacked logprobs and feedback."""

from __future__ import annotations

import math
import uuid
from typing import Any

from sqlalchemy.orm import Session

from monitor.calibration.packing import unpack_token_logprobs
from monitor.errors import NotFoundError
from monitor.feedback.service import to_out
from monitor.generations import repository
from monitor.generations.schemas import GenerationOut, LogprobPosition


def get_generation(session: Session, generation_id: uuid.UUID) -> GenerationOut:
    row = repository.get_generation(session, generation_id)
    if row is None:
        raise NotFoundError(f"generation {generation_id} not found", field="id")
    feedback = [to_out(f) for f in repository.feedback_for(session, generation_id)]
    return GenerationOut(
        id=row.id,
        task=row.task,
        created_at=row.created_at,
        model=row.model,
        endpoint=row.endpoint,
        stream=row.stream,
        partial=row.partial,
        confidence=row.confidence,
        raw_confidence=row.raw_confidence,
        token_count=row.token_count,
        prompt_tokens=row.prompt_tokens,
        finish_reason=row.finish_reason,
        calibration_version=row.calibration_version,
        temperature=row.temperature,
        top_k=row.top_k,
        answer_start=row.answer_start,
        answer_end=row.answer_end,
        top_margin=row.top_margin,
        repetition=row.repetition,
        latency_ms=row.latency_ms,
        overhead_ms=row.overhead_ms,
        sampling=row.sampling,
        prompt=row.prompt,
        response_text=row.response_text,
        label=row.label,
        labelled_at=row.labelled_at,
        logprobs=positions(row.logprobs),
        feedback=feedback,
    )


def positions(blob: bytes | None) -> list[LogprobPosition]:
    """Stored arrays as JSON-able positions; -inf (no entry) is left out or null."""
    if not blob:
        return []
    chosen, top, rank = unpack_token_logprobs(blob)
    out: list[LogprobPosition] = []
    for i in range(chosen.shape[0]):
        values: list[Any] = [float(v) for v in top[i] if math.isfinite(float(v))]
        value = float(chosen[i])
        out.append(
            LogprobPosition(
                chosen_logprob=value if math.isfinite(value) else None,
                top_logprobs=values,
                chosen_rank=int(rank[i]),
            )
        )
    return out
