"""Recorder ingestion into Postgres, and storage bytes per token, against baselines.

N generation records of `--tokens` tokens with top-5 logprobs (the shape the
proxy hands the recorder) are submitted to a real `Recorder` (bounded queue,
one writer thread, batched multi-row INSERT ... ON CONFLICT DO NOTHING) on a
fresh, migrated Postgres database; the rate is N over the time from the
first submit until the last row is committed. Baseline, same run, same rows:
one ORM INSERT and COMMIT per row. Storage: pg_total_relation_size of
`generations` (heap + TOAST + indexes) per token, and the packed logprob blob
alone per token; baseline: the same logprobs as JSON per token (OpenAI
`logprobs.content` shape) in a JSONB column.

    .venv/bin/python bench/recorder_ingestion.py --records 5000 --tokens 200
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prometheus_client import CollectorRegistry  # noqa: E402
from sqlalchemy import text  # noqa: E402

from monitor.db.engine import build_engine  # noqa: E402
from monitor.db.models import Generation  # noqa: E402
from monitor.db.session import make_session_factory, session_scope  # noqa: E402
from monitor.proxy.metrics import ProxyMetrics  # noqa: E402
from monitor.proxy.recorder import Recorder  # noqa: E402
from monitor.proxy.records import GenerationRecord, generation_row  # noqa: E402
from monitor.settings import RecorderSettings  # noqa: E402
from monitor.tasks.repository import ensure_tasks  # noqa: E402
from tests.support.databases import (  # noqa: E402
    create_postgres_database,
    drop_postgres_database,
    migrate_url,
    postgres_url,
)

K = 5
WORDS = [" the", " answer", " is", " 4", ".", " so", " we", " get", " x", " =", " yes", " not"]


def make_records(n: int, tokens: int, seed: int = 0) -> list[GenerationRecord]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        top = np.sort(rng.uniform(-12, 0, size=(tokens, K)).astype(np.float32), axis=1)[:, ::-1]
        rank = rng.choice([0, 0, 0, 1, 2, -1], size=tokens).astype(np.int8)
        chosen = np.where(rank >= 0, top[np.arange(tokens), np.maximum(rank, 0)], -13.0)
        words = rng.choice(WORDS, size=tokens)
        out.append(
            GenerationRecord(
                task="bench",
                model="bench-model",
                prompt=[{"role": "user", "content": f"question {i}: what is 2 + 2?"}],
                response_text="".join(words),
                finish_reason="stop",
                token_count=tokens,
                prompt_tokens=12,
                top_k=K,
                chosen=chosen.astype(np.float32),
                top=np.ascontiguousarray(top),
                chosen_rank=rank,
                raw_confidence=0.8,
                confidence=0.75,
            )
        )
    return out


def json_logprobs(record: GenerationRecord) -> bytes:
    """What storing the upstream's JSON per token would keep (token strings included)."""
    assert record.top is not None and record.chosen is not None
    words = (record.response_text or "").split(" ")
    content = [
        {
            "token": words[i % len(words)],
            "logprob": float(record.chosen[i]),
            "top_logprobs": [
                {"token": WORDS[j], "logprob": float(record.top[i, j])} for j in range(K)
            ],
        }
        for i in range(record.chosen.shape[0])
    ]
    return orjson.dumps(content)


def run_recorder(url: str, records: list[GenerationRecord], batch: int) -> float:
    engine = build_engine(url)
    sessions = make_session_factory(engine)
    metrics = ProxyMetrics(CollectorRegistry())
    settings = RecorderSettings(
        queue_size=len(records) + 10, batch_size=batch, flush_interval_s=0.05
    )
    with tempfile.TemporaryDirectory() as spool:
        recorder = Recorder(settings, sessions, Path(spool), metrics)
        asyncio.run(recorder.start())
        started = time.perf_counter()
        for record in records:
            assert recorder.submit(record)
        assert recorder.wait_idle(timeout=600)
        elapsed = time.perf_counter() - started
        asyncio.run(recorder.stop())
    written = metrics.written_total.labels(kind="generation")._value.get()
    assert written == len(records), written
    engine.dispose()
    return elapsed


def run_orm_baseline(url: str, records: list[GenerationRecord]) -> float:
    engine = build_engine(url)
    sessions = make_session_factory(engine)
    with session_scope(sessions) as session:
        ensure_tasks(session, {"bench"})
    started = time.perf_counter()
    for record in records:
        row = generation_row(record)  # the same packing work as the recorder does
        row["id"] = uuid.uuid4()
        with session_scope(sessions) as session:
            session.add(Generation(**row))
    elapsed = time.perf_counter() - started
    engine.dispose()
    return elapsed


def storage(url: str, records: list[GenerationRecord]) -> dict[str, float]:
    engine = build_engine(url)
    tokens = sum(r.token_count for r in records)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE bench_json (id uuid PRIMARY KEY, logprobs jsonb)"))
        for start in range(0, len(records), 500):
            conn.execute(
                text("INSERT INTO bench_json VALUES (:id, CAST(:lp AS jsonb))"),
                [
                    {"id": r.id, "lp": json_logprobs(r).decode()}
                    for r in records[start : start + 500]
                ],
            )
    with engine.connect() as conn:
        conn.execute(text("ANALYZE"))
        ids = [r.id for r in records]
        q = "SELECT sum(octet_length(logprobs)), sum(pg_column_size(logprobs)) FROM generations"
        blob_raw, blob_stored = conn.execute(text(q + " WHERE id = ANY(:ids)"), {"ids": ids}).one()
        total = conn.scalar(text("SELECT pg_total_relation_size('generations')"))
        json_total = conn.scalar(text("SELECT pg_total_relation_size('bench_json')"))
        json_stored = conn.scalar(text("SELECT sum(pg_column_size(logprobs)) FROM bench_json"))
        n_rows = conn.scalar(text("SELECT count(*) FROM generations"))
    engine.dispose()
    all_tokens = tokens * n_rows / len(records)  # the table also holds the ORM baseline's rows
    return {
        "tokens": tokens,
        "table_per_token": total / all_tokens,
        "blob_per_token": blob_raw / tokens,
        "blob_stored_per_token": blob_stored / tokens,
        "json_table_per_token": json_total / tokens,
        "json_stored_per_token": json_stored / tokens,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--records", type=int, default=5000)
    p.add_argument("--baseline-records", type=int, default=1000)
    p.add_argument("--tokens", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=500)
    a = p.parse_args()
    records = make_records(a.records, a.tokens)
    baseline = make_records(a.baseline_records, a.tokens, seed=1)
    name = create_postgres_database()
    url = postgres_url(name)
    try:
        migrate_url(url)
        recorder_s = run_recorder(url, records, a.batch_size)
        orm_s = run_orm_baseline(url, baseline)
        sizes = storage(url, records)
    finally:
        drop_postgres_database(name)
    rec_rate = a.records / recorder_s
    orm_rate = a.baseline_records / orm_s
    print(f"{a.records} records x {a.tokens} tokens, top-{K}; Postgres at {url.split('@')[-1]}\n")
    print("| writer | generations | seconds | generations/s | tokens/s |")
    print("|---|---|---|---|---|")
    print(
        f"| recorder (queue, batches of {a.batch_size}) | {a.records} | {recorder_s:.2f} "
        f"| {rec_rate:,.0f} | {rec_rate * a.tokens:,.0f} |"
    )
    print(
        f"| baseline: one ORM INSERT + COMMIT per row | {a.baseline_records} | {orm_s:.2f} "
        f"| {orm_rate:,.0f} | {orm_rate * a.tokens:,.0f} |"
    )
    print(f"\nrecorder / baseline: {rec_rate / orm_rate:.1f}x\n")
    print("| storage | bytes per token |")
    print("|---|---|")
    print(
        f"| packed logprob blob (float32 + K float16 + int8 rank) | {sizes['blob_per_token']:.2f} |"
    )
    print(f"| packed blob as stored (pg_column_size) | {sizes['blob_stored_per_token']:.2f} |")
    print(
        f"| whole `generations` table (heap+TOAST+indexes, text included) "
        f"| {sizes['table_per_token']:.2f} |"
    )
    print(f"| baseline: JSON per token, JSONB as stored | {sizes['json_stored_per_token']:.2f} |")
    print(f"| baseline: JSONB table total | {sizes['json_table_per_token']:.2f} |")
    ratio = sizes["json_stored_per_token"] / sizes["blob_stored_per_token"]
    print(f"\nJSONB / packed blob (as stored): {ratio:.1f}x")


if __name__ == "__main__":
    main()
