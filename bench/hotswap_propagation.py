"""How long from an activation's commit until two listener processes serve it.

Starts two child processes, each a runtime with only the hot-swap service,
then alternates activations of two versions from the parent, `--rounds`
times. Each child prints the wall-clock time of every swap; the delay of a
round is the later child's swap time minus the commit time. Run once against
Postgres (LISTEN/NOTIFY) and once against SQLite (polling, default 1 s).

    .venv/bin/python bench/hotswap_propagation.py --rounds 20
    .venv/bin/python bench/hotswap_propagation.py --postgres-url postgresql+psycopg://...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TASK = "bench"


def child(url: str, poll_interval: float) -> None:
    """A listener process: print one JSON line per swap, with the wall-clock time."""
    from monitor.runtime import open_runtime
    from monitor.serving.hotswap import HotSwapService
    from monitor.settings import load_settings

    settings = load_settings(database_url=url, hot_swap={"poll_interval_s": poll_interval})
    runtime = open_runtime(settings, "api")
    table = runtime.calibration_table
    original = table.replace

    def replace(entries: Any) -> bool:
        changed = original(entries)
        if changed and TASK in entries:
            print(json.dumps({"t": time.time(), "version": entries[TASK].version}), flush=True)
        return changed

    table.replace = replace  # type: ignore[method-assign]

    async def main() -> None:
        service = HotSwapService(runtime)
        await service.start()
        if not runtime.is_sqlite:
            await service.listening.wait()
        print(json.dumps({"ready": True}), flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def prepare(url: str) -> tuple[int, int]:
    from monitor.db.engine import build_engine
    from monitor.db.migrate import upgrade
    from monitor.db.models import Calibration
    from monitor.db.session import make_session_factory, session_scope
    from monitor.db.types import utcnow
    from monitor.tasks.repository import ensure_tasks

    engine = build_engine(url)
    upgrade(engine)
    ids = []
    with session_scope(make_session_factory(engine)) as session:
        ensure_tasks(session, [TASK])
        for version, status in ((1, "active"), (2, "retired")):
            row = Calibration(
                task=TASK, version=version, temperature=1.0 + version, status=status,
                source="bench", created_at=utcnow(), activated_at=utcnow(),
            )  # fmt: skip
            session.add(row)
            session.flush()
            ids.append(row.id)
    engine.dispose()
    return ids[0], ids[1]


def measure(url: str, rounds: int, poll_interval: float) -> list[float]:
    from monitor.calibrations.service import activate
    from monitor.db.engine import build_engine
    from monitor.db.session import make_session_factory, session_scope

    first, second = prepare(url)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, __file__, "--child", url, "--poll-interval", str(poll_interval)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    swaps: list[list[dict[str, Any]]] = [[], []]
    ready = [threading.Event(), threading.Event()]

    def read(i: int) -> None:
        stream = procs[i].stdout
        assert stream is not None
        for line in stream:
            msg = json.loads(line)
            if msg.get("ready"):
                ready[i].set()
            else:
                swaps[i].append(msg)

    for i in range(2):
        threading.Thread(target=read, args=(i,), daemon=True).start()
    engine = build_engine(url)
    sessions = make_session_factory(engine)
    delays = []
    try:
        for event in ready:
            if not event.wait(60):
                raise SystemExit("a listener did not start")
        for n in range(rounds):
            target, version = (second, 2) if n % 2 == 0 else (first, 1)
            time.sleep(0.2 + (n % 5) * 0.037)  # de-phase from the poll interval
            with session_scope(sessions) as session:
                activate(session, target)
            committed = time.time()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                seen = [next((s["t"] for s in reversed(sw) if s["version"] == version
                              and s["t"] >= committed - 0.5), None) for sw in swaps]  # fmt: skip
                if all(t is not None for t in seen):
                    delays.append(max(t for t in seen if t is not None) - committed)
                    break
                time.sleep(0.001)
            else:
                raise SystemExit(f"round {n}: listeners did not switch within 10 s")
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
        engine.dispose()
    return delays


def summary(name: str, delays: list[float]) -> str:
    ms = sorted(d * 1000 for d in delays)
    p95 = ms[max(0, round(0.95 * len(ms)) - 1)]
    return (
        f"{name:<22} n={len(ms):<3} median {statistics.median(ms):7.1f} ms   "
        f"p95 {p95:7.1f} ms   max {ms[-1]:7.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--poll-interval", type=float, default=1.0)
    parser.add_argument(
        "--postgres-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    )
    args = parser.parse_args()
    if args.child:
        child(args.child, args.poll_interval)
        return

    import psycopg
    from sqlalchemy.engine import make_url

    base = make_url(args.postgres_url)
    name = f"thermostat_bench_{uuid.uuid4().hex[:8]}"
    admin = base.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        pg_url = base.set(database=name).render_as_string(hide_password=False)
        print(summary("postgres LISTEN/NOTIFY", measure(pg_url, args.rounds, args.poll_interval)))
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    with tempfile.TemporaryDirectory() as tmp:
        sqlite_url = f"sqlite:///{tmp}/bench.db"
        label = f"sqlite poll {args.poll_interval:g}s"
        print(summary(label, measure(sqlite_url, args.rounds, args.poll_interval)))


if __name__ == "__main__":
    main()
