"""Byte splicing equals the slow path (loads, modify, compare); SSE parsing under any chunking.

SSE parser tests live here because the stream relay is parse -> splice -> forward.
"""

from __future__ import annotations

import copy
import random
from typing import Any

import orjson
import pytest

from monitor.proxy.capture import capture_response
from monitor.proxy.splice import (
    append_thermostat,
    strip_logprobs,
    thermostat_insertion,
    trim_top_logprobs,
)
from monitor.proxy.sse import SSEParser, encode_event
from monitor.proxy.stream_capture import StreamCapture
from tests.support.fake_upstream import random_response, render_json

THERMO = {"generation_id": "g-1", "task": "t", "confidence": 0.5, "calibration_version": None}


def slow_strip(obj: dict) -> dict:
    obj = copy.deepcopy(obj)
    for c in obj["choices"]:
        if "logprobs" in c:
            c["logprobs"] = None
    return obj


def slow_trim(obj: dict, endpoint: str, k: int) -> dict:
    obj = copy.deepcopy(obj)
    for c in obj["choices"]:
        lp = c.get("logprobs")
        if not lp:
            continue
        if endpoint == "chat":
            for e in lp["content"] or []:
                e["top_logprobs"] = sorted(e["top_logprobs"], key=lambda t: -t["logprob"])[:k]
        else:
            lp["top_logprobs"] = [
                None if d is None else dict(sorted(d.items(), key=lambda kv: -kv[1])[:k])
                for d in lp["top_logprobs"]
            ]
    return obj


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_strip_trim_append_equal_slow_path(endpoint: str) -> None:
    rng = random.Random(2024)
    for case in range(300):
        obj = random_response(rng, endpoint, 5)
        body = render_json(obj, rng) if case % 3 else orjson.dumps(obj)
        got = capture_response(body, endpoint, 5)
        stripped = strip_logprobs(body, got)
        assert orjson.loads(stripped) == slow_strip(obj)
        k = rng.choice([0, 1, 2, 4, 5])
        assert orjson.loads(trim_top_logprobs(body, got, k)) == slow_trim(obj, endpoint, k)
        t = orjson.dumps({**THERMO, "task": rng.choice(["a", 'q"\\}', "東京"])})
        out = append_thermostat(stripped, t)
        assert orjson.loads(out) == {**slow_strip(obj), "thermostat": orjson.loads(t)}
        # Untouched bytes stay byte-identical: only the spans changed.
        if all(s is None for s in got.logprobs_spans):
            assert stripped == body


def test_trim_zero_gives_empty_chat_lists_and_sorted_cut() -> None:
    content = [
        {
            "token": "b",
            "logprob": -1.0,
            "top_logprobs": [
                {"token": "b", "logprob": -1.0},
                {"token": "a", "logprob": -0.2},
                {"token": "c", "logprob": -2.0},
            ],
        }
    ]
    body = orjson.dumps(
        {"choices": [{"index": 0, "message": {"content": "b"}, "logprobs": {"content": content}}]}
    )
    got = capture_response(body, "chat")
    zero = orjson.loads(trim_top_logprobs(body, got, 0))
    assert zero["choices"][0]["logprobs"]["content"][0]["top_logprobs"] == []
    one = orjson.loads(trim_top_logprobs(body, got, 1))
    assert one["choices"][0]["logprobs"]["content"][0]["top_logprobs"] == [
        {"token": "a", "logprob": -0.2}
    ]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"a":1}', b'{"a":1,"thermostat":{"x":1}}'),
        (b'{"a":1}\n', b'{"a":1,"thermostat":{"x":1}}\n'),
        (b'{\n  "a": 1\n}\r\n  ', b'{\n  "a": 1\n,"thermostat":{"x":1}}\r\n  '),
        (b"{}", b'{"thermostat":{"x":1}}'),
        (b"{ \n }", b'{ \n "thermostat":{"x":1}}'),
    ],
)
def test_append_thermostat_shapes(body: bytes, expected: bytes) -> None:
    assert append_thermostat(body, b'{"x":1}') == expected
    pos, ins = thermostat_insertion(body, b'{"x":1}')
    assert body[:pos] + ins + body[pos:] == expected


@pytest.mark.parametrize("body", [b"", b"   ", b"[1]", b'"}"x', b"}"])
def test_append_thermostat_rejects_non_objects(body: bytes) -> None:
    with pytest.raises(ValueError):
        append_thermostat(body, b"{}")


def test_spans_from_another_body_are_rejected() -> None:
    big = orjson.dumps(random_response(random.Random(3), "chat", 5))
    got = capture_response(big, "chat", 5)
    if any(got.logprobs_spans):
        with pytest.raises(ValueError):
            strip_logprobs(b"{}", got)


@pytest.mark.parametrize("value", [b"null", b"{  }", b'{"content":[]}'])
def test_strip_leaves_only_a_null_value_alone(value: bytes) -> None:
    """A value that is null already is not edited; one of null's length that is not null
    (whitespace in an object) is replaced like any other."""
    body = (
        b'{"choices":[{"index":0,"message":{"content":"x"},"logprobs":'
        + value
        + b',"finish_reason":"stop"}]}'
    )
    got = capture_response(body, "chat", 5)
    stripped = strip_logprobs(body, got)
    assert orjson.loads(stripped)["choices"][0]["logprobs"] is None
    assert (stripped is body) == (value == b"null")


# --- streams: SSE parsing, then per-chunk splicing ----------------------------------


def _random_chunks(data: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(0, 40))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def _wire(payloads: list[bytes], rng: random.Random, sep: bytes) -> bytes:
    out = [b": keep-alive comment" + sep[: len(sep) // 2] + sep[: len(sep) // 2]]
    for p in payloads:
        out.append(b"data: " + p + sep)
        if rng.random() < 0.1:
            out.append(b"event: ping" + sep[: len(sep) // 2] + b"data:" + p + sep)
    out.append(b"data: [DONE]" + sep)
    return b"".join(out)


@pytest.mark.parametrize("sep", [b"\n\n", b"\r\n\r\n", b"\r\r"])
def test_sse_parser_any_chunking(sep: bytes) -> None:
    rng = random.Random(len(sep))
    payloads = [orjson.dumps({"i": i, "s": "a\\nb \u6771 }{"}) for i in range(30)]
    wire = _wire(payloads, rng, sep)
    expected = None
    for _ in range(200):
        parser = SSEParser()
        events = [ev for ch in _random_chunks(wire, rng) for ev in parser.feed(ch)]
        events += parser.close()
        assert b"".join(ev.raw for ev in events) == wire  # forwarded byte for byte
        datas = [ev.data for ev in events]
        expected = expected or datas
        assert datas == expected
    assert expected is not None and expected[0] is None  # the comment
    assert next(d for d in expected if d is not None and d != b"[DONE]") == payloads[0]
    assert expected[-1] == b"[DONE]"


def test_sse_multiline_data_and_cut_stream() -> None:
    parser = SSEParser()
    events = parser.feed(b'event: x\ndata: a\ndata:b\n\ndata: {"cut')
    assert [(e.event, e.data) for e in events] == [("x", b"a\nb")]
    assert parser.pending == len(b'data: {"cut')
    (tail,) = parser.close()
    assert tail.data is None and tail.raw == b'data: {"cut'
    assert SSEParser().feed(b"data: [DONE]\n\n")[0].is_done


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_stream_chunks_stripped_and_trimmed(endpoint: str) -> None:
    """Relay: parse random chunking, capture each payload, strip it, re-frame it."""
    from tests.support.fake_upstream import chat_logprobs, completions_logprobs, generate

    rng = random.Random(11)
    pos = generate(rng, 25)
    payloads: list[bytes] = []
    for p in pos:
        choice: dict[str, Any] = {"index": 0, "finish_reason": None}
        if endpoint == "chat":
            choice.update(delta={"content": p["token"]}, logprobs=chat_logprobs([p], 5))
        else:
            choice.update(text=p["token"], logprobs=completions_logprobs([p], 5))
        # Shuffled keys and spacing, but one line: SSE data never holds raw newlines.
        text = render_json({"model": "m", "choices": [choice]}, rng)
        payloads.append(text.replace(b"\n", b" ").replace(b"\r", b" ").strip())
    wire = b"".join(encode_event(p) for p in payloads) + b"data: [DONE]\n\n"
    parser, sc = SSEParser(), StreamCapture(endpoint, k=5)
    forwarded: list[bytes] = []
    for chunk in _random_chunks(wire, rng):
        for ev in parser.feed(chunk):
            assert ev.data is not None
            info = sc.feed(ev.data)
            if ev.is_done:
                forwarded.append(ev.raw)
                continue
            assert info.ok
            out = strip_logprobs(ev.data, info)
            assert orjson.loads(out) == slow_strip(orjson.loads(ev.data))
            trimmed = trim_top_logprobs(ev.data, info, 2)
            assert orjson.loads(trimmed) == slow_trim(orjson.loads(ev.data), endpoint, 2)
            forwarded.append(encode_event(out))
    got = sc.result()
    assert not got.partial and got.text == "".join(p["token"] for p in pos)
    assert len(got.tokens) == 25 and got.top.shape == (25, 5)
    assert len(forwarded) == 26 and all(b"top_logprobs" not in f for f in forwarded)
