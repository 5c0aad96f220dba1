"""Odd values from an upstream or a client never cost a generation, on either database.

Postgres refuses NUL in text and JSONB and integers past its INTEGER columns;
SQLite overflows past 64 bits, and the spool's msgpack past 64 bits too. Before
the writer made every row storable, such a generation was dropped on Postgres,
and on SQLite it failed its whole batch and kept the spool's replay failing.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from monitor.db.models import Generation
from monitor.proxy.records import generation_row
from tests.recorder.helpers import make_record, unreachable_sessions, wait_for

NUL_TEXT = "a\x00b"
ODD = [
    {"response_text": NUL_TEXT, "model": "m\x00", "finish_reason": "st\x00p"},
    {"prompt": [{"role": "user", "content": NUL_TEXT, "na\x00me": 1}]},
    {"sampling": {"stop": ["\x00"], "seed": 2**63}},
    {"prompt_tokens": 2**64, "token_count": 2**63},
    {"prompt_tokens": -3, "token_count": -1},
    {"prompt_tokens": 2**40, "token_count": 2**31},
]


def _stored(sessions: sessionmaker[Session]) -> dict[Any, Generation]:
    with sessions() as session:
        return {g.id: g for g in session.scalars(select(Generation))}


def _check(stored: dict[Any, Generation], records: list[Any]) -> None:
    assert set(stored) == {r.id for r in records}
    nul_text, nul_prompt, nul_sampling, *absurd = (stored[r.id] for r in records[1:-1])
    assert nul_text.response_text == "a\ufffdb"
    assert nul_text.model == "m\ufffd" and nul_text.finish_reason == "st\ufffdp"
    assert nul_prompt.prompt == [{"role": "user", "content": "a\ufffdb", "na\ufffdme": 1}]
    assert nul_sampling.sampling == {"stop": ["\ufffd"], "seed": 2**63}
    for generation in absurd:  # not a count: unknown, and the positions stand in
        assert generation.prompt_tokens is None
        assert generation.token_count == 4
    assert stored[records[0].id].prompt_tokens is None  # make_record's default
    assert stored[records[0].id].token_count == 4


def _records() -> list[Any]:
    return [make_record(), *(make_record(**odd) for odd in ODD), make_record()]


def test_odd_values_are_stored_not_refused(
    make_recorder: Any, sessions: sessionmaker[Session]
) -> None:
    recorder = make_recorder(batch_size=len(ODD) + 2, flush_interval_s=0.3)
    records = _records()
    assert all(recorder.submit(r) for r in records)
    assert recorder.wait_idle(30)
    assert not recorder.spool.has_data()
    _check(_stored(sessions), records)


def test_odd_values_survive_the_spool_and_replay(
    make_recorder: Any, sessions: sessionmaker[Session], backend: str
) -> None:
    recorder = make_recorder(on=unreachable_sessions(backend), batch_size=len(ODD) + 2)
    records = _records()
    assert all(recorder.submit(r) for r in records)
    wait_for(lambda: recorder.spool.has_data(), timeout=20)
    recorder.sessions = sessions  # the database is back
    wait_for(lambda: not recorder.spool.has_data(), timeout=20)
    _check(_stored(sessions), records)


def test_widths_are_kept() -> None:
    row = generation_row(make_record(model="m" * 300, finish_reason="f" * 40))
    assert len(row["model"]) == 256 and len(row["finish_reason"]) == 32
