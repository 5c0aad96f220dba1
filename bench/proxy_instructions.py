"""Instructions per proxied request, counted by callgrind: the sidecar against the bare relay.

    .venv/bin/python bench/proxy_instructions.py [--requests 200] [--warmup 100] [--top 15]

Why: the timings of ``proxy_overhead.py`` move with the host (the same code
added 0.7 to 1.7 ms at concurrency 32 on different machines), so a change
worth 20 us of CPU per request cannot be told from noise in a timed A/B.
callgrind counts the instructions a process executes in user space, not
seconds: the same code, body and request count give the same number on any
x86-64 host, whatever else it is doing. It does not see the kernel (socket
reads and writes), and what an instruction costs still depends on the caches,
so this is a guide to where the proxy's own work goes, next to the timings,
not a latency.

How: the benchmark upstream (``upstream_server.py``, the same 98 KB answers,
1 to 2 ms of delay) serves the sidecar (``thermostat serve --role api``) and
the bare relay (``naive_proxy.py --client bare``), each run under
``valgrind --tool=callgrind``. After ``--warmup`` requests the counters are
zeroed (``callgrind_control --zero``), exactly ``--requests`` requests are
sent one after another on one keep-alive connection (the body of
``post.lua``: no logprobs asked, so the sidecar strips them), and the counts
are dumped, one file per thread. Printed: instructions per request, on the
event loop's thread (the request's path) and on the others (the sidecar's
recorder thread, which hands batches to the writer process, and pollers,
whose count grows with the run's wall time under valgrind, not with its
requests), by shared object, the loop thread's heaviest functions, and the
sidecar/bare ratio. The writer process is another program, not traced.

Under valgrind, glibc's ``memcpy`` (``rep movsb``) counts about one
instruction per byte copied, so its line reads as bytes copied per request.
Needs ``valgrind`` (Debian: apt-get install valgrind); takes about 2 minutes.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
import proxy_overhead as po

BODY = b'{"model":"m","messages":[{"role":"user","content":"What is 2+2?"}],"max_tokens":200}'
_NAME = re.compile(r"\((\d+)\)(?: (.*))?")


@dataclass
class Counts:
    """Self cost (Ir) per (shared object, function), by thread."""

    loop_thread: collections.Counter[tuple[str, str]]
    other_threads: collections.Counter[tuple[str, str]]

    @property
    def every_thread(self) -> collections.Counter[tuple[str, str]]:
        return self.loop_thread + self.other_threads


def callgrind(out_dir: Path) -> list[str]:
    return [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out_dir}/callgrind.%p",
        "--dump-instr=no",
        "--separate-threads=yes",  # the event loop's thread apart from the others
    ]


def control(pid: int, option: str) -> None:
    """Tell the callgrind running as `pid` to zero its counters or dump them."""
    subprocess.run(["callgrind_control", option, str(pid)], check=True, capture_output=True)


def post(url: str, count: int) -> None:
    """`count` chat requests in a row on one connection; every answer must be 200."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    try:
        for _ in range(count):
            conn.request("POST", po.CHAT, BODY, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{url} answered {resp.status}")
    finally:
        conn.close()


def self_costs(path: Path) -> collections.Counter[tuple[str, str]]:
    """Self cost (Ir) per (shared object, function) of one callgrind dump.

    The format's name compression ("fn=(12) name" once, "fn=(12)" after) and
    call lines ("calls=" then the callee's inclusive cost, not the caller's
    own) are all this needs; callgrind_annotate's report is for people.
    """
    names: dict[str, dict[str, str]] = {"ob": {}, "fn": {}}
    costs: collections.Counter[tuple[str, str]] = collections.Counter()
    obj = fn = ""
    after_calls = False

    def resolve(kind: str, text: str) -> str:
        m = _NAME.match(text)
        if m is None:
            return text
        key, name = m.groups()
        if name:
            names[kind][key] = name
        return names[kind].get(key, key)

    for line in path.read_text().splitlines():
        if line.startswith("ob="):
            obj = resolve("ob", line[3:])
        elif line.startswith("fn="):
            fn = resolve("fn", line[3:])
        elif line.startswith("cob="):
            resolve("ob", line[4:])
        elif line.startswith("cfn="):
            resolve("fn", line[4:])
        elif line.startswith("calls="):
            after_calls = True
        elif line[:1].isdigit() or line[:1] in "+-*":
            fields = line.split()
            if len(fields) >= 2 and not after_calls:
                costs[(obj, fn)] += int(fields[1])
            after_calls = False
    return costs


def measure(
    procs: po.Procs,
    name: str,
    cmd: list[str],
    env: dict[str, str],
    a: argparse.Namespace,
    port: int | None = None,
) -> Counts:
    """Run `cmd` under callgrind (on `port`, or the one it prints) and count."""
    out_dir = Path(tempfile.mkdtemp(prefix=f"callgrind-{name}-"))
    proc = procs.start(callgrind(out_dir) + cmd, env, pipe=port is None)
    url = f"http://127.0.0.1:{port or po.read_port(proc, timeout=600)}"
    po.wait_http(url + "/v1/models", timeout=600)
    print(f"{name}: under callgrind at {url}; {a.warmup} requests to warm up", flush=True)
    post(url, a.warmup)
    control(proc.pid, "--zero")
    post(url, a.requests)
    control(proc.pid, "--dump=measured")
    procs.stop(proc)
    # One file per thread of the "measured" dump (part 1): "-01" is the main
    # thread, which runs the event loop; the others are the recorder's writer
    # thread, timers and idle pools.
    dumps = sorted(out_dir.glob(f"callgrind.{proc.pid}.1-*"))
    if not dumps:
        raise RuntimeError(f"callgrind wrote no dump for {name} in {out_dir}")
    counts = Counts(self_costs(dumps[0]), collections.Counter())
    for dump in dumps[1:]:
        counts.other_threads.update(self_costs(dump))
    shutil.rmtree(out_dir, ignore_errors=True)
    return counts


def by_object(costs: collections.Counter[tuple[str, str]]) -> collections.Counter[str]:
    out: collections.Counter[str] = collections.Counter()
    for (obj, _fn), cost in costs.items():
        out[Path(obj).name.split(".cpython")[0] or "?"] += cost
    return out


def report(sidecar: Counts, bare: Counts, a: argparse.Namespace) -> None:
    n = a.requests
    side_obj, bare_obj = by_object(sidecar.every_thread), by_object(bare.every_thread)
    side_total, bare_total = sum(side_obj.values()), sum(bare_obj.values())
    print(f"\ninstructions per request ({n} requests, callgrind, user space only)")
    print(f"{'':34s} {'sidecar':>11s} {'bare relay':>11s}")
    print(f"{'total':34s} {side_total / n:11,.0f} {bare_total / n:11,.0f}")
    for label, side, base in (
        ("on the event loop's thread", sidecar.loop_thread, bare.loop_thread),
        ("on other threads", sidecar.other_threads, bare.other_threads),
    ):
        print(f"  {label:32s} {sum(side.values()) / n:11,.0f} {sum(base.values()) / n:11,.0f}")
    print("by shared object, every thread:")
    for obj, cost in side_obj.most_common():
        if cost < 0.005 * side_total:
            break
        print(f"  {obj:32s} {cost / n:11,.0f} {bare_obj.get(obj, 0) / n:11,.0f}")
    print(
        f"sidecar/bare {side_total / bare_total:.2f}; sidecar - bare "
        f"{(side_total - bare_total) / n:,.0f} instructions per request"
    )
    print(f"\nthe sidecar's {a.top} heaviest functions on the event loop's thread (self)")
    loop_total = sum(sidecar.loop_thread.values())
    for (obj, fn), cost in sidecar.loop_thread.most_common(a.top):
        share = 100 * cost / loop_total
        print(f"  {cost / n:9,.0f} {share:5.1f}%  {fn[:60]} [{Path(obj).name[:28]}]")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=200, help="requests counted per process")
    p.add_argument("--warmup", type=int, default=100, help="requests before counting")
    p.add_argument("--top", type=int, default=15, help="functions listed")
    a = p.parse_args()
    if a.requests < 1 or a.warmup < 0:
        p.error("--requests must be at least 1 and --warmup at least 0")
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not on PATH (Debian: apt-get install valgrind)")
    with po.running() as procs, tempfile.TemporaryDirectory(prefix="thermostat-bench-") as tmp:
        upstream, _ = po.start_upstream(procs, 1, 2)
        thermostat = shutil.which("thermostat", path=str(Path(po.PY).parent)) or "thermostat"
        env = {
            "THERMOSTAT_UPSTREAM_URL": upstream + "/v1",
            "THERMOSTAT_HOME": tmp,
            "THERMOSTAT_LOG_LEVEL": "WARNING",
        }
        port = po.free_port()
        serve = [po.PY, thermostat, "serve", "--role", "api", "--port", str(port)]
        sidecar = measure(procs, "sidecar", serve, env, a, port)
        relay = [po.PY, str(po.BENCH / "naive_proxy.py"), "--upstream", upstream + "/v1"]
        bare = measure(procs, "bare relay", [*relay, "--client", "bare"], {}, a)
    report(sidecar, bare, a)


if __name__ == "__main__":
    main()
