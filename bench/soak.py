"""A bounded soak: fixed request rate through a real sidecar, feedback and evaluations on.

Starts `thermostat serve` (all roles, embedded SQLite unless --database-url)
in a child process in front of the test suite's fake upstream, sends chat
completions at `--rate` per second for `--minutes`, posts feedback on every
`--feedback-every`-th answer, lets the scheduler evaluate every
`--evaluate-interval` seconds, and samples every `--sample` seconds the RSS
(from /proc) of the sidecar and of each process it started (the recorder's
writer process, multiprocessing's resource tracker), separately and in
total, and the recorder's queue depth and spool bytes (from /metrics).
Prints the samples, then least-squares slopes over the second half (after
warm-up): a leak shows as a steady positive RSS slope, in the sidecar or in
a child.

    .venv/bin/python bench/soak.py --minutes 10
    .venv/bin/python bench/soak.py --minutes 3 --rate 20
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.fake_upstream import FakeUpstream  # noqa: E402
from tests.support.servers import free_port  # noqa: E402

TASK = "soak"
FEEDBACK_TOKEN = "soak-feedback"
ADMIN_TOKEN = "soak-admin"


@dataclass
class Sample:
    elapsed_s: float
    rss_mb: float  # the sidecar process itself
    children_mb: dict[str, float]  # its descendants' RSS by kind (see child_kind)
    queue_depth: float
    spool_bytes: float
    sent: int
    ok: int
    errors: int
    feedback: int

    @property
    def children_total_mb(self) -> float:
        return sum(self.children_mb.values())

    @property
    def total_mb(self) -> float:
        return self.rss_mb + self.children_total_mb


def rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) / 1024 if match else float("nan")


def child_rss(kind: str) -> Callable[[Sample], float]:
    """A sample's RSS for one kind of child (0 while none of that kind runs)."""
    return lambda sample: sample.children_mb.get(kind, 0.0)


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (children, their children, ...), from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited while we looked
            continue
        # pid (comm) state ppid ...; comm may hold spaces and parentheses
        parents[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return sorted(found)


def child_kind(pid: int) -> str:
    """What a child of the sidecar is, from its command line."""
    cmdline = (
        Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    )
    if "resource_tracker" in cmdline:
        return "resource tracker"
    if "spawn_main" in cmdline or "--multiprocessing-fork" in cmdline:
        return "writer"  # the sidecar's only spawned worker: the recorder's writer process
    return Path(cmdline.split(" ", 1)[0]).name or f"pid {pid}"


def children_rss_mb(pid: int) -> dict[str, float]:
    """RSS of the sidecar's descendants, summed per kind (a restarted writer is one kind)."""
    by_kind: dict[str, float] = {}
    for child in descendants(pid):
        try:
            kind, rss = child_kind(child), rss_mb(child)
        except OSError:
            continue
        if rss == rss:  # a zombie has no VmRSS
            by_kind[kind] = by_kind.get(kind, 0.0) + rss
    return by_kind


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else float("nan")


def slope(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    if n < 2:
        return float("nan")
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0


def wait_ready(base: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"serve exited with {process.returncode}")
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("serve did not become ready")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=20.0, help="requests per second")
    p.add_argument("--sample", type=float, default=5.0, help="seconds between samples")
    p.add_argument("--feedback-every", type=int, default=2)
    p.add_argument("--evaluate-interval", type=float, default=15.0)
    p.add_argument("--database-url", default=None, help="default: SQLite in a temp home")
    p.add_argument("--tokens", type=int, default=64, help="max_tokens per request")
    a = p.parse_args()

    home = Path(tempfile.mkdtemp(prefix="thermostat-soak-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    counts = {"sent": 0, "ok": 0, "errors": 0, "feedback": 0}
    error_kinds: dict[str, int] = {}  # what went wrong, so a failure is diagnosable
    lock = threading.Lock()
    with FakeUpstream() as upstream:
        upstream.mode = {"delay_ms": "5-30"}
        env = {k: v for k, v in os.environ.items() if not k.startswith("THERMOSTAT_")}
        env.update(
            THERMOSTAT_HOME=str(home),
            THERMOSTAT_UPSTREAM_URL=upstream.base_url,
            THERMOSTAT_EVALUATE_INTERVAL_S=str(a.evaluate_interval),
            THERMOSTAT_ADMIN_TOKEN=ADMIN_TOKEN,
            THERMOSTAT_FEEDBACK_TOKEN=FEEDBACK_TOKEN,
            THERMOSTAT_LOG_LEVEL="INFO",
        )
        if a.database_url:
            env["THERMOSTAT_DATABASE_URL"] = a.database_url
        log = (home / "serve.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "monitor", "serve", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_ready(base, process)
            client = httpx.Client(
                base_url=base, timeout=30, limits=httpx.Limits(max_connections=32)
            )

            def one(i: int) -> None:
                body = {
                    "model": "m",
                    "messages": [{"role": "user", "content": f"soak question {i}"}],
                    "max_tokens": a.tokens,
                }
                try:
                    r = client.post(
                        "/v1/chat/completions", json=body, headers={"X-Thermostat-Task": TASK}
                    )
                    good = r.status_code == 200
                    fed = False
                    if good and i % a.feedback_every == 0:
                        fb = client.post(
                            "/v1/feedback",
                            json={
                                "generation_id": r.headers["x-thermostat-generation-id"],
                                "label": i % 3 != 0,
                            },
                            headers={"Authorization": f"Bearer {FEEDBACK_TOKEN}"},
                        )
                        fed = fb.status_code == 201
                    problem = None if good else f"HTTP {r.status_code}"
                except httpx.HTTPError as exc:
                    good, fed, problem = False, False, type(exc).__name__
                with lock:
                    counts["ok" if good else "errors"] += 1
                    counts["feedback"] += fed
                    if problem:
                        error_kinds[problem] = error_kinds.get(problem, 0) + 1

            samples: list[Sample] = []
            started = time.monotonic()
            end = started + a.minutes * 60
            next_sample = started
            i = 0
            with ThreadPoolExecutor(max_workers=32) as pool:
                while (now := time.monotonic()) < end:
                    due = int((now - started) * a.rate)
                    while i < due:
                        pool.submit(one, i)
                        i += 1
                        counts["sent"] = i
                    if now >= next_sample:
                        if process.poll() is not None:
                            print(f"serve exited with status {process.returncode}; stopping")
                            break
                        try:
                            text = client.get("/metrics").text
                        except httpx.HTTPError as exc:
                            print(f"/metrics unreachable ({exc!r}); serve rc={process.poll()}")
                            time.sleep(1)
                            continue
                        with lock:
                            snap = dict(counts)
                        samples.append(
                            Sample(
                                now - started,
                                rss_mb(process.pid),
                                children_rss_mb(process.pid),
                                metric(text, "thermostat_recorder_queue_depth"),
                                metric(text, "thermostat_recorder_spool_bytes"),
                                **snap,
                            )
                        )
                        s = samples[-1]
                        kids = ", ".join(f"{k} {v:.1f}" for k, v in sorted(s.children_mb.items()))
                        print(
                            f"{s.elapsed_s:7.0f} s  rss {s.rss_mb:7.1f} MB"
                            f"  children {s.children_total_mb:6.1f} MB ({kids or 'none'})"
                            f"  total {s.total_mb:7.1f} MB"
                            f"  queue {s.queue_depth:5.0f}  spool {s.spool_bytes:6.0f} B"
                            f"  sent {s.sent:6d}  ok {s.ok:6d}"
                            f"  err {s.errors:4d}  feedback {s.feedback:6d}",
                            flush=True,
                        )
                        next_sample += a.sample
                    time.sleep(0.005)
            admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            try:
                url = f"/api/tasks/{TASK}/metrics"
                snapshots = client.get(url, headers=admin).json()["items"]
            except httpx.HTTPError:
                snapshots = []
            client.close()
        finally:
            process.terminate()
            process.wait(timeout=60)
            log.close()

    if not samples:
        raise SystemExit(f"no samples taken; log: {home / 'serve.log'}")
    half = [s for s in samples if s.elapsed_s >= samples[-1].elapsed_s / 2]
    xs = [s.elapsed_s / 60 for s in half]
    queue_slope = slope(xs, [s.queue_depth for s in half])
    first, last = samples[0], samples[-1]
    achieved = last.sent / last.elapsed_s if last.elapsed_s else 0.0
    print()
    print("| minutes | rate (req/s, sent) | ok | errors | feedback | evaluations |")
    print("|---|---|---|---|---|---|")
    print(
        f"| {a.minutes:g} | {a.rate:g} ({achieved:.1f}) | {last.ok} | {last.errors} "
        f"| {last.feedback} | {len(snapshots)} |"
    )
    print()
    print("| | first sample | last sample | max | slope over 2nd half |")
    print("|---|---|---|---|---|")
    kinds = sorted({kind for s in samples for kind in s.children_mb})
    rows: list[tuple[str, Callable[[Sample], float]]] = [("RSS (MB), sidecar", lambda s: s.rss_mb)]
    rows += [(f"RSS (MB), {kind}", child_rss(kind)) for kind in kinds]
    rows += [
        ("RSS (MB), children", lambda s: s.children_total_mb),
        ("RSS (MB), total", lambda s: s.total_mb),
    ]
    for label, value in rows:
        print(
            f"| {label} | {value(first):.1f} | {value(last):.1f} "
            f"| {max(value(s) for s in samples):.1f} "
            f"| {slope(xs, [value(s) for s in half]):+.2f} MB/min |"
        )
    print(
        f"| queue depth | {first.queue_depth:.0f} | {last.queue_depth:.0f} "
        f"| {max(s.queue_depth for s in samples):.0f} | {queue_slope:+.2f} /min |"
    )
    if error_kinds:
        print("errors by kind: " + ", ".join(f"{k} x{n}" for k, n in sorted(error_kinds.items())))
    print(f"\nserve exit status: {process.returncode}; log: {home / 'serve.log'}")


if __name__ == "__main__":
    main()
