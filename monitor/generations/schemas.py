"""Response shape of `GET /api/generations/{id}` (contract names plus useful extras)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from monitor.feedback.schemas import FeedbackOut


class LogprobPosition(BaseModel):
    chosen_logprob: float | None
    top_logprobs: list[float]
    chosen_rank: int  # column of the chosen token in top_logprobs, -1 if not among them


class GenerationOut(BaseModel):
    id: uuid.UUID
    task: str
    created_at: datetime
    model: str | None
    endpoint: str
    stream: bool
    partial: bool
    confidence: float | None
    raw_confidence: float | None
    token_count: int
    prompt_tokens: int | None
    finish_reason: str | None
    calibration_version: int | None
    temperature: float
    top_k: int | None
    answer_start: int | None
    answer_end: int | None
    top_margin: float | None
    repetition: float | None
    latency_ms: float | None
    overhead_ms: float | None
    sampling: dict[str, Any] | None
    prompt: Any | None
    response_text: str | None
    label: float | None
    labelled_at: datetime | None
    logprobs: list[LogprobPosition]
    feedback: list[FeedbackOut]  # newest first
