"""Tasks, generations (one proxied answer each) and the feedback on them."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, SmallInteger, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from monitor.db.base import Base
from monitor.db.types import BinaryType, JSONType, UTCDateTime, UUIDType, utcnow, uuid7


class Task(Base):
    """A task tag seen in traffic or configured; holds its effective config snapshot."""

    __tablename__ = "tasks"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    configured: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str | None] = mapped_column(String(24))
    last_evaluated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    recalibrate_not_before: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Generation(Base):
    """One answer served through the proxy, with its packed per-token logprobs.

    `logprobs` holds the chosen token's logprob (float32), the top-K logprobs
    (float16) and the chosen token's rank per position (int8), packed by
    `monitor.calibration.packing`: 15 bytes per token at K=5. `label` caches
    the effective feedback label so evaluation scans one table.
    """

    __tablename__ = "generations"

    id: Mapped[uuid.UUID] = mapped_column(UUIDType, primary_key=True, default=uuid7)
    task: Mapped[str] = mapped_column(ForeignKey("tasks.name", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    model: Mapped[str | None] = mapped_column(String(256))
    endpoint: Mapped[str] = mapped_column(String(16), default="chat")
    stream: Mapped[bool] = mapped_column(Boolean, default=False)
    partial: Mapped[bool] = mapped_column(Boolean, default=False)
    prompt: Mapped[Any | None] = mapped_column(JSONType)
    prompt_sha256: Mapped[str | None] = mapped_column(String(64))
    response_text: Mapped[str | None] = mapped_column(Text)
    response_sha256: Mapped[str | None] = mapped_column(String(64))
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    token_count: Mapped[int] = mapped_column(Integer, default=0)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    upstream_status: Mapped[int | None] = mapped_column(SmallInteger)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    overhead_ms: Mapped[float | None] = mapped_column(Float)
    sampling: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    top_k: Mapped[int | None] = mapped_column(SmallInteger)
    logprobs: Mapped[bytes | None] = mapped_column(BinaryType)
    answer_start: Mapped[int | None] = mapped_column(Integer)
    answer_end: Mapped[int | None] = mapped_column(Integer)
    top_margin: Mapped[float | None] = mapped_column(Float)
    repetition: Mapped[float | None] = mapped_column(Float)
    raw_confidence: Mapped[float | None] = mapped_column(Float)
    confidence: Mapped[float | None] = mapped_column(Float)
    temperature: Mapped[float] = mapped_column(Float, default=1.0)
    calibration_version: Mapped[int | None] = mapped_column(Integer)
    rescored_confidence: Mapped[float | None] = mapped_column(Float)
    rescored_version: Mapped[int | None] = mapped_column(Integer)
    label: Mapped[float | None] = mapped_column(Float)
    labelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_generations_task_created_at", "task", "created_at"),
        # Evaluation reads only labelled rows of a window; most rows have no label.
        Index(
            "ix_generations_task_labelled",
            "task",
            "created_at",
            sqlite_where=text("label IS NOT NULL"),
            postgresql_where=text("label IS NOT NULL"),
        ),
    )


class Feedback(Base):
    """A user's or grader's verdict on a generation; the latest per source counts.

    No foreign key to generations: feedback may arrive while its generation is
    still in the recorder's queue.
    """

    __tablename__ = "feedback"

    id: Mapped[uuid.UUID] = mapped_column(UUIDType, primary_key=True, default=uuid7)
    generation_id: Mapped[uuid.UUID] = mapped_column(UUIDType)
    label: Mapped[float] = mapped_column(Float)
    kind: Mapped[str] = mapped_column(String(8), default="label")
    source: Mapped[str] = mapped_column(String(64), default="user")
    comment: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    request_sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        Index("ix_feedback_generation_id_source", "generation_id", "source", "created_at"),
    )
