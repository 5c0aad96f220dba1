"""Microseconds per call of the proxy's hot-path body work on a ~100 KB response.

    python bench/capture_speed.py [--tokens 200 --top-k 5 --number 2000]

Reports the best of several repeats (the least disturbed by other load), for
capture, strip, append and trim on the vLLM-shaped bodies of ``responses.py``,
next to the reference points a full ``orjson.loads`` and a decode-only msgspec
pass give on the same bytes.
"""

from __future__ import annotations

import argparse
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

import msgspec
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import responses

from monitor.proxy import capture as cap
from monitor.proxy.capture import capture_response
from monitor.proxy.splice import append_thermostat, strip_logprobs, trim_top_logprobs
from monitor.proxy.stream_capture import StreamCapture


def best_us(fn: Callable[[], object], number: int) -> float:
    fn()
    return min(timeit.repeat(fn, number=number, repeat=7)) / number * 1e6


def report(endpoint: cap.Endpoint, body: bytes, k: int, thermo: bytes, n: int) -> None:
    c = capture_response(body, endpoint, k)
    stripped = strip_logprobs(body, c)
    rows = {
        "orjson.loads (reference)": best_us(lambda: orjson.loads(body), n // 4),
        "msgspec skip-only scan (floor)": best_us(
            lambda: msgspec.json.decode(body, type=msgspec.Raw), n
        ),
        "capture_response": best_us(lambda: capture_response(body, endpoint, k), n),
        "  split_body (decode + spans)": best_us(lambda: cap.split_body(body, endpoint), n),
        "strip_logprobs": best_us(lambda: strip_logprobs(body, c), n),
        "append_thermostat (stripped)": best_us(lambda: append_thermostat(stripped, thermo), n),
        "append_thermostat (full body)": best_us(lambda: append_thermostat(body, thermo), n),
        "trim_top_logprobs k=2 (rare)": best_us(lambda: trim_top_logprobs(body, c, 2), n // 4),
    }
    print(f"{endpoint}: {len(body):,} bytes, {len(c.tokens)} tokens, top-{c.k}")
    for name, us in rows.items():
        print(f"  {name:34s} {us:8.1f} us")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=200)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--number", type=int, default=2000)
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
