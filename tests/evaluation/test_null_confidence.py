"""An answer without logprobs (no confidence) must not break evaluation on either database."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import insert
from sqlalchemy.orm import Session, sessionmaker

from monitor.db.models import Generation, Task
from monitor.db.session import session_scope
from monitor.db.types import utcnow
from monitor.evaluation.service import evaluate_all
from monitor.settings import Settings


def test_generation_without_confidence_is_counted_but_not_binned(
    sessions: sessionmaker[Session], make_settings: Callable[..., Settings]
) -> None:
    now = utcnow()
    with session_scope(sessions) as session:
        session.execute(
            insert(Task).values(
                name="t", config={}, configured=False, created_at=now, updated_at=now
            )
        )
        rows = [
            {
                "id": uuid.uuid4(),
                "task": "t",
                "created_at": now - timedelta(minutes=i + 1),
                "endpoint": "chat",
                "stream": False,
                "partial": False,
                "token_count": 3,
                "temperature": 1.0,
                "raw_confidence": conf,
                "confidence": conf,
                "label": 1.0,
                "labelled_at": now,
            }
            for i, conf in enumerate([None, 0.7, 0.9])
        ]
        session.execute(insert(Generation), rows)
    with session_scope(sessions) as session:
        (result,) = evaluate_all(session, make_settings(), now=now)
    assert result.n_generations == 3
    assert result.n == 2  # the one without a confidence cannot be judged
