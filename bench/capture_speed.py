"""Microseconds per call of the proxy's hot-path body work on a ~100 KB response.

    python bench/capture_speed.py [--tokens 200 --top-k 5 --number 2000]
        [--baseline-scanner OLD.c|OLD.so]

Reports the best of several repeats (the least disturbed by other load), for
capture, strip, append and trim on the vLLM-shaped bodies of ``responses.py``,
next to the reference points a full ``orjson.loads`` and a decode-only msgspec
pass give on the same bytes.

``--baseline-scanner`` times the C scanner against another build of it in the
same process, interleaved round by round (a host whose speed drifts moves
both): give a built module, or a ``_logprob_scan.c`` of another revision
(``git show REV:monitor/proxy/_logprob_scan.c > /tmp/old.c``), compiled here
with Python's own compiler flags.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import shlex
import subprocess
import sys
import sysconfig
import tempfile
import timeit
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import responses

from monitor.proxy import capture as cap
from monitor.proxy import capture_split
from monitor.proxy.capture import capture_response
from monitor.proxy.captured import Endpoint
from monitor.proxy.splice import append_thermostat, strip_logprobs, trim_top_logprobs
from monitor.proxy.stream_capture import StreamCapture


def best_us(fn: Callable[[], object], number: int) -> float:
    fn()
    return min(timeit.repeat(fn, number=number, repeat=7)) / number * 1e6


def report(endpoint: Endpoint, body: bytes, k: int, thermo: bytes, n: int) -> None:
    c = capture_response(body, endpoint, k)
    stripped = strip_logprobs(body, c)
    rows = {
        "orjson.loads (reference)": best_us(lambda: orjson.loads(body), n // 4),
        "msgspec skip-only scan (floor)": best_us(
            lambda: msgspec.json.decode(body, type=msgspec.Raw), n
        ),
        "capture_response": best_us(lambda: capture_response(body, endpoint, k), n),
        "  split_body (decode + spans)": best_us(
            lambda: capture_split.split_body(body, endpoint), n
        ),
        "strip_logprobs": best_us(lambda: strip_logprobs(body, c), n),
        "append_thermostat (stripped)": best_us(lambda: append_thermostat(stripped, thermo), n),
        "append_thermostat (full body)": best_us(lambda: append_thermostat(body, thermo), n),
        "trim_top_logprobs k=2 (rare)": best_us(lambda: trim_top_logprobs(body, c, 2), n // 4),
    }
    print(f"{endpoint}: {len(body):,} bytes, {len(c.tokens)} tokens, top-{c.k}")
    for name, us in rows.items():
        print(f"  {name:34s} {us:8.1f} us")


def load_scanner(path: str) -> object:
    """Another build of `_logprob_scan`, from a built module or a C source compiled here."""
    if not Path(path).is_file():
        sys.exit(f"--baseline-scanner: no such file: {path}")
    if path.endswith(".c"):
        out = str(Path(tempfile.mkdtemp()) / "_logprob_scan.so")
        cc = shlex.split(sysconfig.get_config_var("CC") or "cc")
        flags = shlex.split(sysconfig.get_config_var("CFLAGS") or "")
        flags += shlex.split(sysconfig.get_config_var("CCSHARED") or "-fPIC")
        include = "-I" + sysconfig.get_paths()["include"]
        if subprocess.run([*cc, *flags, "-shared", include, path, "-o", out]).returncode:
            sys.exit(f"--baseline-scanner: {path} did not compile (the compiler's errors above)")
        path = out
    name = "baseline._logprob_scan"  # the init function is found by the last part
    loader = importlib.machinery.ExtensionFileLoader(name, path)
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def compare_scanners(baseline: object, body: bytes, k: int, rounds: int = 15) -> None:
    start = capture_split._logprobs_start(body)
    builds: dict[str, Any] = {"this build": cap.native_scanner(), "baseline": baseline}
    times: dict[str, list[float]] = {name: [] for name in builds}
    for _ in range(rounds):
        for name, module in builds.items():
            call = partial(module.scan_chat, body, start, k, msgspec.json.decode)
            times[name].append(best_us(call, 100))
    base = min(times["baseline"])
    for name, values in times.items():
        print(
            f"  scan_chat, {name:10s} best {min(values):7.1f} us, "
            f"median {sorted(values)[rounds // 2]:7.1f} us, "
            f"best / baseline's best {min(values) / base:.3f}"
        )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=200)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--number", type=int, default=2000)
    p.add_argument("--baseline-scanner", help="another build of the C scanner: .so or .c")
    a = p.parse_args()
    thermo = orjson.dumps(
        {
            "generation_id": "0193f1c2-aaaa",
            "task": "default",
            "confidence": 0.8123,
            "raw_confidence": 0.7911,
            "temperature": 1.3,
            "calibration_version": 4,
        }
    )
    bodies = {
        "chat": responses.chat_body(a.tokens, a.top_k),
        "completions": responses.completions_body(a.tokens, a.top_k),
    }
    if a.baseline_scanner:
        if cap.native_scanner() is None:
            sys.exit("this checkout's C scanner is not built (pip install -e .)")
        print(f"chat, {len(bodies['chat']):,} bytes: the C scanner against {a.baseline_scanner}")
        compare_scanners(load_scanner(a.baseline_scanner), bodies["chat"], a.top_k)
        return
    for ep, body in bodies.items():
        report("chat" if ep == "chat" else "completions", body, a.top_k, thermo, a.number)
    events = [e[6:-2] for e in responses.chat_stream(a.tokens, a.top_k)]

    def stream() -> None:
        sc = StreamCapture("chat", k=a.top_k)
        for e in events:
            info = sc.feed(e)
            strip_logprobs(e, info)
        sc.result()

    us = best_us(stream, max(1, a.number // 20))
    print(
        f"chat stream: {len(events)} events, feed+strip all + result: {us:.0f} us "
        f"({us / len(events):.1f} us per chunk)"
    )


if __name__ == "__main__":
    main()
