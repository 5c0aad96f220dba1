"""Evaluation time per task at 1e4, 1e5 and 1e6 labelled generations, Postgres and SQLite.

Why: DESIGN.md asks that a task with a million labelled generations in its
window evaluates in under 2 s. Three ways to get the numbers are timed:

- sql:    what the scheduler runs (`evaluate_task`): reliability bins and
          sums by one GROUP BY on a bin index computed in SQL, every
          label-free signal by one GROUP BY over (window, bucket), the binned
          bootstrap, the snapshot, the rules and alert state;
- narrow: one narrow query fetching (confidence, label) as floats, numpy
          metrics and the binned bootstrap (what "fetch two columns" costs);
- orm:    the naive baseline, load every Generation as an ORM object and
          compute with `monitor.calibration.compute_metrics`.

Usage: python bench/evaluate_time.py [--sizes 10000,100000,1000000]
       [--backends postgres,sqlite] [--orm-max 100000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import psycopg
from sqlalchemy import Engine, select, text

from monitor.alerting.rules import load_rules
from monitor.calibration import compute_metrics
from monitor.db import migrate
from monitor.db.engine import build_engine
from monitor.db.models import Generation
from monitor.db.session import make_session_factory
from monitor.evaluation.service import evaluate_task
from monitor.evaluation.signals import BinStats, binned_ece_bootstrap
from monitor.settings import load_settings
from monitor.tasks.repository import ensure_tasks
from tests.support.databases import create_postgres_database, drop_postgres_database, postgres_url

TASK = "bench"
COLUMNS = (
    "id, task, created_at, endpoint, stream, partial, token_count, temperature, "
    "confidence, raw_confidence, label, finish_reason, repetition, top_margin"
)


def synthetic(n: int, now: datetime, seed: int = 0) -> list[tuple[object, ...]]:
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0.3, 1.0, n)
    label = (rng.random(n) < conf - 0.05).astype(float)
    seconds = rng.uniform(1, 23 * 3600, n)
    return [
        (
            uuid.uuid4(),
            TASK,
            now - timedelta(seconds=float(seconds[i])),
            "chat",
            False,
            False,
            40,
            1.0,
            float(conf[i]),
            float(conf[i]),
            float(label[i]),
            "stop",
            0.05,
            0.3,
        )
        for i in range(n)
    ]


def load_postgres(engine: Engine, rows: list[tuple[object, ...]]) -> None:
    url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY generations ({COLUMNS}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        conn.commit()
    with engine.begin() as conn:
        conn.execute(text("ANALYZE generations"))


def load_sqlite(engine: Engine, rows: list[tuple[object, ...]]) -> None:
    marks = ", ".join(["?"] * 14)
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        prepared = [
            (r[0].hex, *r[1:2], r[2].replace(tzinfo=None).isoformat(sep=" "), *r[3:])  # type: ignore[attr-defined]
            for r in rows
        ]
        cur.executemany(f"INSERT INTO generations ({COLUMNS}) VALUES ({marks})", prepared)
        raw.commit()
        cur.execute("ANALYZE")
    finally:
        raw.close()


def time_it(fn, repeat: int = 3) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def bench(backend: str, n: int, orm_max: int) -> dict[str, float | None]:
    tmp = Path(tempfile.mkdtemp())
    name = None
    if backend == "postgres":
        name = create_postgres_database()
        url = postgres_url(name)
    else:
        url = f"sqlite:///{tmp / 'bench.db'}"
    engine = build_engine(url)
    try:
        migrate.upgrade(engine)
        sessions = make_session_factory(engine)
        with sessions.begin() as session:
            ensure_tasks(session, [TASK])
        now = datetime.now(UTC)
        rows = synthetic(n, now)
        (load_postgres if backend == "postgres" else load_sqlite)(engine, rows)
        del rows
        settings = load_settings(home=tmp, database_url=url)
        rules = load_rules()

        def sql_path() -> None:
            with sessions() as session:
                result = evaluate_task(session, settings, TASK, now, rules, None)
                assert result.n == n, result.n
                session.rollback()

        def narrow_path() -> None:
            with sessions() as session:
                stmt = select(Generation.confidence, Generation.label).where(
                    Generation.task == TASK,
                    Generation.label.is_not(None),
                    Generation.created_at > now - timedelta(days=1),
                    Generation.created_at <= now,
                    Generation.calibration_version.is_(None),
                )
                data = np.array([tuple(r) for r in session.execute(stmt)], dtype=np.float64)
            metrics = compute_metrics(data[:, 0], data[:, 1], 15, bootstrap=False)
            stats = [
                BinStats(
                    b.count,
                    (b.mean_confidence or 0) * b.count,
                    0.0,
                    (b.accuracy or 0) * b.count,
                    0.0,
                    0.0,
                )
                for b in metrics.bins
            ]
            binned_ece_bootstrap(stats, 200)

        def orm_path() -> None:
            with sessions() as session:
                gens = session.scalars(select(Generation).where(Generation.task == TASK)).all()
                conf = [g.confidence for g in gens]
                lab = [g.label for g in gens]
            compute_metrics(conf, lab, 15, bootstrap=False)

        return {
            "sql": time_it(sql_path),
            "narrow": time_it(narrow_path),
            "orm": time_it(orm_path, repeat=1) if n <= orm_max else None,
        }
    finally:
        engine.dispose()
        if name:
            drop_postgres_database(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--backends", default="postgres,sqlite")
    parser.add_argument("--orm-max", type=int, default=100_000)
    args = parser.parse_args()
    print(f"{'backend':9} {'n':>9} {'sql s':>8} {'narrow s':>9} {'orm s':>8} {'orm/sql':>8}")
    for backend in args.backends.split(","):
        for n in (int(s) for s in args.sizes.split(",")):
            r = bench(backend, n, args.orm_max)
            orm = r["orm"]
            ratio = f"{orm / r['sql']:.1f}x" if orm and r["sql"] else "-"
            orm_s = f"{orm:.3f}" if orm else "-"
            print(
                f"{backend:9} {n:>9} {r['sql']:>8.3f} {r['narrow']:>9.3f} {orm_s:>8} {ratio:>8}",
                flush=True,
            )


if __name__ == "__main__":
    main()
