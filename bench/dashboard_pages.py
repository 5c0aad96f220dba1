"""Time every dashboard page against 1,000,000 generations on Postgres.

Why: the dashboard must stay usable on a production-sized table (target:
every page under 300 ms). Seeding is done in SQL with generate_series so a
million rows take seconds, not minutes; the database is created fresh,
migrated with Alembic, seeded, ANALYZEd, timed through the real app (sign-in
included), then dropped unless --keep.

    .venv/bin/python bench/dashboard_pages.py [--rows 1000000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from monitor.app import create_app
from monitor.db import migrate
from monitor.db.engine import build_engine
from monitor.settings import load_settings

TOKEN = "bench-admin-token-0123456789abcdef"
TARGET_MS = 300.0
TASKS = ("bench_busy", "bench_quiet")
SPAN_DAYS = 7

SEED_SQL = [
    "INSERT INTO tasks (name, config, configured, created_at, updated_at) "
    "VALUES ('bench_busy', '{}', false, now(), now()), ('bench_quiet', '{}', false, now(), now())",
    # 1M generations over 7 days, 80% on the busy task; 40% labelled, overconfident labels.
    """
    INSERT INTO generations (id, task, created_at, endpoint, stream, partial, token_count,
        finish_reason, raw_confidence, confidence, temperature, calibration_version,
        label, labelled_at, top_margin, repetition)
    SELECT gen_random_uuid(),
           CASE WHEN i % 5 = 0 THEN 'bench_quiet' ELSE 'bench_busy' END,
           now() - (i * (:span_s / :rows)) * interval '1 second',
           'chat', false, false, 8 + i % 50,
           CASE WHEN i % 40 = 0 THEN 'length' ELSE 'stop' END,
           r, least(0.999, r * 0.9 + 0.05), 1.1, 2,
           CASE WHEN l < 0.4 THEN (random() < power(r, 1.6))::int::float END,
           CASE WHEN l < 0.4 THEN now() END,
           r / 2, 0.01
    FROM (SELECT i, random() AS r, random() AS l FROM generate_series(1, :rows) AS i) AS s
    """,
    # One snapshot per task per minute for 7 days (the default evaluation interval).
    """
    INSERT INTO metric_snapshots (task, evaluated_at, window_start, window_end, status, n,
        n_generations, accuracy, mean_confidence, ece, ece_low, ece_high, mce, brier, nll,
        calibration_version, bins, signals)
    SELECT t, now() - m * interval '1 minute', now() - m * interval '1 minute' - interval '1 day',
           now() - m * interval '1 minute', 'breach', 5000, 20000, 0.6, 0.75,
           0.1 + 0.1 * sin(m / 500.0) ^ 2, 0.09, 0.21, 0.3, 0.2, 0.6, 2, bins.b,
           jsonb_build_object('feedback_rate', 0.4, 'confidence_psi', 0.05,
                              'generations', 20000, 'labelled', 8000)
    FROM unnest(ARRAY['bench_busy', 'bench_quiet']) AS t, generate_series(0, 7 * 1440) AS m,
         (SELECT jsonb_agg(jsonb_build_object('lower', k / 15.0, 'upper', (k + 1) / 15.0,
                 'count', 300, 'mean_confidence', (k + 0.5) / 15.0,
                 'accuracy', (k + 0.5) / 15.0 * 0.8)) AS b
          FROM generate_series(0, 14) AS k) AS bins
    """,
    """
    INSERT INTO calibrations (task, version, method, temperature, status, source, n_train,
        n_holdout, created_at, activated_at, metrics_before, metrics_after)
    SELECT t, v, 'temperature', 1.0 + v / 10.0,
           CASE WHEN v = 2 THEN 'active' ELSE 'retired' END, 'worker', 4000, 1000,
           now() - (30 - v) * interval '1 day', now() - (30 - v) * interval '1 day',
           '{"ece": 0.2, "nll": 0.7}', '{"ece": 0.05, "nll": 0.6}'
    FROM unnest(ARRAY['bench_busy', 'bench_quiet']) AS t, generate_series(1, 20) AS v
    """,
    "UPDATE calibrations SET status = 'retired' WHERE version > 2",
    """
    INSERT INTO recalibration_jobs (task, trigger, status, attempts, max_attempts, device,
        created_at, started_at, finished_at, result)
    SELECT CASE WHEN j % 2 = 0 THEN 'bench_busy' ELSE 'bench_quiet' END, 'cron',
           CASE WHEN j % 3 = 0 THEN 'rejected' ELSE 'succeeded' END, 1, 3, 'cuda',
           now() - j * interval '1 hour', now() - j * interval '1 hour',
           now() - j * interval '1 hour' + interval '4 seconds', '{"reason": "ok"}'
    FROM generate_series(1, 5000) AS j
    """,
    """
    INSERT INTO alerts (rule, task, state, severity, value, threshold, samples, consecutive,
        started_at, fired_at, resolved_at, updated_at)
    SELECT 'ece_above_threshold', CASE WHEN a % 2 = 0 THEN 'bench_busy' ELSE 'bench_quiet' END,
           'resolved', 'warning', 0.2, 0.15, 5000, 0, now() - a * interval '2 hours',
           now() - a * interval '2 hours', now() - a * interval '1 hour', now()
    FROM generate_series(1, 3000) AS a
    """,
    """
    INSERT INTO alerts (rule, task, state, severity, value, threshold, samples, consecutive,
        started_at, fired_at, updated_at)
    VALUES ('ece_above_threshold', 'bench_busy', 'firing', 'critical', 0.21, 0.15, 5000, 3,
            now(), now(), now())
    """,
    """
    INSERT INTO webhooks (url, secret, events, source, enabled, consecutive_failures, created_at)
    SELECT 'https://hooks.example.com/' || w, 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw',
           '["alert.firing"]', 'api', w % 2 = 0, 0, now()
    FROM generate_series(1, 5) AS w
    """,
    """
    INSERT INTO webhook_deliveries (webhook_id, event_type, message_id, payload, status,
        attempts, last_status_code, created_at)
    SELECT 1 + d % 5, 'alert.firing', 'msg_' || d, '{}', 'delivered', 1, 200,
           now() - d * interval '1 minute'
    FROM generate_series(1, 50000) AS d
    """,
]


def admin_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def seed(url: str, rows: int) -> float:
    t0 = time.perf_counter()
    with psycopg.connect(admin_dsn(url), autocommit=True) as conn:
        for sql in SEED_SQL:
            # Our own integers, inlined: the statements use % as the modulo operator.
            text = sql.replace(":rows", str(int(rows))).replace(":span_s", f"{SPAN_DAYS * 86400}.0")
            conn.execute(text.encode())
        conn.execute("VACUUM ANALYZE")
    return time.perf_counter() - t0


def time_pages(url: str, repeat: int) -> list[tuple[str, float, float]]:
    settings = load_settings(
        home=Path(tempfile.mkdtemp()),
        database_url=url,
        admin_token=TOKEN,
        scheduler={
            "evaluate_enabled": False,
            "webhook_delivery_enabled": False,
            "retention_enabled": False,
            "cron_recalibration_enabled": False,
        },
    )
    with TestClient(create_app(settings, role="api")) as client:
        client.post("/dashboard/login", data={"token": TOKEN})
        task = client.get(f"/dashboard/tasks/{TASKS[0]}").text
        marker = "?before="
        cursor = task.split(marker, 1)[1].split("#", 1)[0] if marker in task else ""
        pages = [
            ("overview", "/dashboard"),
            ("task (busy)", f"/dashboard/tasks/{TASKS[0]}"),
            ("task (quiet)", f"/dashboard/tasks/{TASKS[1]}"),
            ("task, older generations", f"/dashboard/tasks/{TASKS[0]}?before={cursor}"),
            ("alerts", "/dashboard/alerts"),
            ("alerts, page 50", "/dashboard/alerts?p=50"),
            ("jobs", "/dashboard/jobs"),
            ("jobs, page 100, filtered", "/dashboard/jobs?status=succeeded&p=100"),
            ("webhooks", "/dashboard/webhooks"),
            ("confirm rollback", "/dashboard/calibrations/1/activate"),
        ]
        results = [(name, *_measure(client, path, repeat)) for name, path in pages]
        # Just after a rollback the latest snapshot judged another version, so the
        # active diagram is computed live: the slowest path of the task page.
        with psycopg.connect(admin_dsn(url), autocommit=True) as conn:
            conn.execute("UPDATE calibrations SET status = 'retired' WHERE task = 'bench_busy'")
            conn.execute(
                "UPDATE calibrations SET status = 'active' "
                "WHERE task = 'bench_busy' AND version = 1"
            )
            # ... and the worker has re-scored the window under version 1.
            conn.execute(
                "UPDATE generations SET rescored_version = 1, "
                "rescored_confidence = confidence * 0.95 "
                "WHERE task = 'bench_busy' AND created_at > now() - interval '2 days'"
            )
            conn.execute("VACUUM ANALYZE generations")
        path = f"/dashboard/tasks/{TASKS[0]}"
        results.append(("task (busy), after rollback", *_measure(client, path, repeat)))
    return results


def _measure(client: TestClient, path: str, repeat: int) -> tuple[float, float]:
    client.get(path)  # warm: templates compiled, plans cached
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        response = client.get(path)
        samples.append((time.perf_counter() - t0) * 1000)
        assert response.status_code == 200, (path, response.status_code)
    return statistics.median(samples), max(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()
    name = f"thermostat_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_dsn(args.admin_url), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = make_url(args.admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        engine = build_engine(url)
        migrate.upgrade(engine)
        engine.dispose()
        seconds = seed(url, args.rows)
        print(f"seeded {args.rows:,} generations in {seconds:.1f} s (database {name})")
        results = time_pages(url, args.repeat)
    finally:
        if not args.keep:
            with psycopg.connect(admin_dsn(args.admin_url), autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    print(f"\n{'page':<28}{'median ms':>11}{'max ms':>9}  within {TARGET_MS:.0f} ms")
    print("-" * 60)
    for page, median, worst in results:
        verdict = "yes" if worst < TARGET_MS else "NO"
        print(f"{page:<28}{median:>11.1f}{worst:>9.1f}  {verdict}")
    return 0 if all(worst < TARGET_MS for _, _, worst in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
