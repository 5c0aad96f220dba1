"""capture.py against a slow reference built from ``orjson.loads`` on many random bodies."""

from __future__ import annotations

import math
import random
from typing import Any

import msgspec
import numpy as np
import orjson
import pytest

from monitor.proxy import capture as cap
from monitor.proxy import capture_split, capture_structs
from monitor.proxy.capture import capture_response
from monitor.proxy.captured import Captured, CaptureError
from monitor.proxy.stream_capture import StreamCapture
from tests.proxy.bodies import chat_body
from tests.support.fake_upstream import random_response, render_json

SENT = -9999.0


@pytest.fixture(autouse=True, params=["native", "python"])
def scan_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs on both chat paths: the C scanner and the msgspec one."""
    if request.param == "python":
        monkeypatch.setattr(cap, "_native", None)
    return str(request.param)


def reference(obj: dict, endpoint: str, k: int) -> dict[str, Any]:
    """What capture must return, computed the slow, obvious way."""
    choice = next((c for c in obj["choices"] if c["index"] == 0), None)
    out: dict[str, Any] = {
        "text": "",
        "finish": None,
        "has": False,
        "tokens": [],
        "chosen": [],
        "top": [],
        "rank": [],
    }
    if choice is None:
        return out
    out["finish"] = choice.get("finish_reason")
    out["text"] = (choice["message"]["content"] if endpoint == "chat" else choice["text"]) or ""
    lp = choice.get("logprobs")
    if lp is None:
        return out
    out["has"] = True
    if endpoint == "chat":
        rows = [
            (e["token"], e["logprob"], [(t["token"], t["logprob"]) for t in e["top_logprobs"]])
            for e in lp["content"] or []
        ]
    else:
        rows = [
            (tok, tlp, list((top or {}).items()))
            for tok, tlp, top in zip(
                lp["tokens"], lp["token_logprobs"], lp["top_logprobs"], strict=True
            )
        ]
    for tok, tlp, alts in rows:
        alts = [(t, -math.inf if v <= SENT else v) for t, v in alts]
        alts = sorted(alts, key=lambda a: -a[1])[:k]  # stable, like numpy's
        out["tokens"].append(tok)
        out["chosen"].append(tlp)
        out["top"].append([v for _, v in alts] + [-math.inf] * (k - len(alts)))
        out["rank"].append(next((i for i, (t, _) in enumerate(alts) if t == tok), -1))
    return out


def assert_matches(got: Captured, obj: dict, endpoint: str, k: int) -> None:
    ref = reference(obj, endpoint, k)
    assert got.text == ref["text"]
    assert got.finish_reason == ref["finish"]
    assert got.has_logprobs == ref["has"]
    assert got.tokens == ref["tokens"]
    n = len(ref["tokens"])
    assert got.chosen.dtype == np.float32 and got.chosen.shape == (n,)
    assert got.top.dtype == np.float32 and got.top.shape == (n, k)
    assert got.chosen_rank.dtype == np.int8
    np.testing.assert_array_equal(got.chosen, np.array(ref["chosen"], np.float32).reshape(n))
    np.testing.assert_array_equal(got.top, np.array(ref["top"], np.float32).reshape(n, k))
    np.testing.assert_array_equal(got.chosen_rank, np.array(ref["rank"], np.int8).reshape(n))


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_random_bodies_match_reference(endpoint: str) -> None:
    rng = random.Random(1234)
    fast = 0
    for case in range(400):
        k = rng.choice([0, 1, 3, 5])
        obj = random_response(rng, endpoint, k)
        body = render_json(obj, rng) if case % 2 else orjson.dumps(obj)
        got = capture_response(body, endpoint, k)
        assert_matches(got, obj, endpoint, k)
        assert got.model == obj["model"] and got.n_choices == len(obj["choices"])
        assert got.prompt_tokens == (obj.get("usage") or {}).get("prompt_tokens")
        # Every span is exactly that choice's logprobs value.
        assert len(got.logprobs_spans) == len(obj["choices"])
        for choice, span in zip(obj["choices"], got.logprobs_spans, strict=True):
            if "logprobs" not in choice:
                assert span is None
            else:
                assert (
                    span is not None and orjson.loads(body[span[0] : span[1]]) == choice["logprobs"]
                )
        fast += (
            capture_split._fast_split(body, capture_structs._LOGPROBS_DECODERS[endpoint])
            is not None
        )
    assert fast > 50  # the one-scan path is really exercised, not only the fallback


def test_fast_path_agrees_with_two_pass_fallback() -> None:
    rng = random.Random(7)
    for _ in range(200):
        obj = random_response(rng, "chat", 5)
        body = render_json(obj, rng)
        fast = capture_split._fast_split(body, capture_structs._LOGPROBS_DECODERS["chat"])
        if fast is None:
            continue
        env = capture_structs._ENVELOPE.decode(body)
        assert fast[2] == capture_split._spans(body, env)


def test_k_inferred_and_sampled_token_outside_top_k() -> None:
    # Row 1: sampled token appended as a K+1-th entry; row 2: sampled first (vLLM V1).
    content = [
        {
            "token": "c",
            "logprob": -3.0,
            "top_logprobs": [
                {"token": "a", "logprob": -0.1},
                {"token": "b", "logprob": -1.0},
                {"token": "c", "logprob": -3.0},
            ],
        },
        {
            "token": "b",
            "logprob": -1.5,
            "top_logprobs": [{"token": "b", "logprob": -1.5}, {"token": "a", "logprob": -0.5}],
        },
    ]
    body = orjson.dumps(
        {"choices": [{"index": 0, "message": {"content": "cb"}, "logprobs": {"content": content}}]}
    )
    got = capture_response(body, "chat")
    assert got.k == 2
    np.testing.assert_array_equal(got.top, np.array([[-0.1, -1.0], [-0.5, -1.5]], np.float32))
    assert got.chosen_rank.tolist() == [-1, 1]


@pytest.mark.parametrize("scan_path", ["python"], indirect=True)
def test_alternative_strings_are_decoded_only_where_numbers_do_not_settle_the_rank(
    monkeypatch: pytest.MonkeyPatch, scan_path: str
) -> None:
    decodes: list[int] = []
    full = capture_structs._LOGPROBS_DECODERS["chat"]

    class Counting:
        def decode(self, raw: Any) -> Any:
            decodes.append(len(raw))
            return full.decode(raw)

    monkeypatch.setitem(capture_structs._LOGPROBS_DECODERS, "chat", Counting())

    # Each chosen logprob equals exactly one alternative above the row's lowest: settled.
    settled = capture_response(chat_body([("a", -0.1, [("a", -0.1), ("b", -2.0)])] * 3), "chat", 2)
    assert settled.chosen_rank.tolist() == [0, 0, 0] and decodes == []

    # Row 2 ties at the lowest value (chosen outside the list, OpenAI style): strings decide.
    tied = [("a", -0.1, [("a", -0.1), ("b", -2.0)]), ("c", -2.0, [("a", -0.1), ("b", -2.0)])]
    got = capture_response(chat_body(tied), "chat", 2)
    assert got.chosen_rank.tolist() == [0, -1] and len(decodes) == 1


def test_missing_logprobs_and_null_content() -> None:
    body = (
        b'{"model":"m","choices":[{"index":0,"message":{"content":null},"finish_reason":"stop"}]}'
    )
    got = capture_response(body, "chat", 5)
    assert not got.has_logprobs and got.text == "" and got.top.shape == (0, 5)
    assert got.logprobs_spans == (None,)
    got = capture_response(body.replace(b'"stop"}', b'"stop","logprobs":null}'), "chat", 5)
    assert not got.has_logprobs and got.logprobs_spans[0] is not None


def test_completions_null_token_logprob_is_nan() -> None:
    lp = {
        "tokens": ["a", "b"],
        "token_logprobs": [None, -0.5],
        "top_logprobs": [None, {"b": -0.5, "c": -0.9}],
    }
    got = capture_response(
        orjson.dumps({"choices": [{"text": "ab", "logprobs": lp}]}), "completions", 2
    )
    assert math.isnan(got.chosen[0]) and got.chosen[1] == np.float32(-0.5)
    assert got.chosen_rank.tolist() == [-1, 0]
    assert np.isneginf(got.top[0]).all()


@pytest.mark.parametrize("body", [b"", b"[1,2]", b'{"choices": 3}', b"not json", b'{"a":'])
def test_bad_bodies_raise_capture_error(body: bytes) -> None:
    with pytest.raises(CaptureError):
        capture_response(body, "chat")


def test_invalid_utf8_the_python_path_finds_is_a_capture_error_not_a_crash() -> None:
    """A tie makes the Python path decode every alternative's string, and one is
    not UTF-8. The proxy forwards a CaptureError's body untouched; anything else
    would be a 500."""
    body = (
        b'{"choices":[{"index":0,"logprobs":{"content":['
        b'{"token":"a","logprob":-1,"top_logprobs":[{"token":"a","logprob":-1},'
        b'{"token":"b","logprob":-1}]},{"token":"c","logprob":-1,"top_logprobs":['
        b'{"token":"c","logprob":-1},{"token":"\xff","logprob":-2}]}]}}]}'
    )
    with pytest.raises(CaptureError):
        capture_response(body, "chat", 2)


@pytest.mark.parametrize(("endpoint", "key"), [("chat", "content"), ("completions", "tokens")])
def test_nesting_msgspec_will_not_follow_is_a_capture_error(endpoint: str, key: str) -> None:
    deep = b"[" * 10_000 + b"]" * 10_000
    body = b'{"choices":[{"index":0,"logprobs":{"x":%s,"%s":[]}}]}' % (deep, key.encode())
    with pytest.raises(CaptureError):
        capture_response(body, endpoint, 2)  # type: ignore[arg-type]


def _stream_events(obj: dict, endpoint: str) -> list[bytes]:
    """Split a response object into one-token chunk payloads, as servers stream it."""
    events = []
    for choice in obj["choices"]:
        lp = choice.get("logprobs")
        n = len(lp["content"] if endpoint == "chat" else lp["tokens"]) if lp else 0
        for i in range(max(n, 1)):
            c: dict[str, Any] = {"index": choice["index"], "finish_reason": None}
            if lp is not None:
                if endpoint == "chat":
                    c["logprobs"] = {"content": lp["content"][i : i + 1]}
                else:
                    c["logprobs"] = {key: v[i : i + 1] for key, v in lp.items()}
            if endpoint == "chat":
                piece = lp["content"][i]["token"] if lp and n else choice["message"]["content"]
                c["delta"] = {"content": piece}
            else:
                c["text"] = lp["tokens"][i] if lp and n else choice["text"]
            events.append({"model": obj["model"], "choices": [c]})
        events.append(
            {
                "choices": [
                    {
                        "index": choice["index"],
                        "delta": {},
                        "text": "",
                        "finish_reason": choice["finish_reason"],
                    }
                ]
            }
        )
    rng = random.Random(len(events))
    return [render_json(e, rng) for e in events]


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_stream_capture_accumulates_every_chunk(endpoint: str) -> None:
    rng = random.Random(99)
    for _ in range(60):
        k = rng.choice([1, 3, 5])
        obj = random_response(rng, endpoint, k)
        c0 = next(c for c in obj["choices"] if c["index"] == 0)
        if c0.get("logprobs") is None or (endpoint == "chat" and not c0["logprobs"]["content"]):
            continue
        text = (
            "".join(e["token"] for e in c0["logprobs"]["content"])
            if endpoint == "chat"
            else c0["text"]
        )
        if endpoint == "chat":
            c0["message"]["content"] = text
        sc = StreamCapture(endpoint, k=k)
        for payload in _stream_events(obj, endpoint):
            info = sc.feed(payload)
            assert info.ok
        assert sc.result().partial  # no [DONE] yet
        sc.feed(b"[DONE]")
        got = sc.result()
        assert not got.partial and got.model == obj["model"]
        assert_matches(got, obj, endpoint, k)


def test_stream_capture_cut_off_keeps_what_arrived() -> None:
    rng = random.Random(5)
    obj = random_response(rng, "chat", 3)
    obj["choices"] = [
        {
            "index": 0,
            "message": {"content": "abc"},
            "finish_reason": "stop",
            "logprobs": {
                "content": [
                    {"token": t, "logprob": -0.5, "top_logprobs": [{"token": t, "logprob": -0.5}]}
                    for t in "abc"
                ]
            },
        }
    ]
    events = _stream_events(obj, "chat")
    sc = StreamCapture("chat", k=1)
    for payload in events[:2]:
        sc.feed(payload)
    sc.feed(events[2][: len(events[2]) // 2])  # torn chunk: counted, not fatal
    got = sc.result()
    assert got.partial and got.text == "ab" and got.tokens == ["a", "b"]
    assert got.finish_reason is None and sc.bad_chunks == 1


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_stream_chunk_with_logprobs_of_another_shape_is_counted_and_skipped(
    endpoint: str,
) -> None:
    # Logprobs are decoded when the result is asked for, all chunks at once: one
    # chunk of the wrong shape must cost that chunk only, not the whole stream.
    if endpoint == "chat":
        top = [
            {"token": t, "logprob": -0.5, "top_logprobs": [{"token": t, "logprob": -0.5}]}
            for t in "abc"
        ]
        choice = {"message": {"content": "abc"}, "logprobs": {"content": top}}
    else:
        lp = {
            "tokens": list("abc"),
            "token_logprobs": [-0.5] * 3,
            "top_logprobs": [{t: -0.5} for t in "abc"],
        }
        choice = {"text": "abc", "logprobs": lp}
    obj = {"model": "m", "choices": [{"index": 0, "finish_reason": "stop", **choice}]}
    events = _stream_events(obj, endpoint)
    broken = orjson.loads(events[1])
    broken["choices"][0]["logprobs"] = {"content": 7} if endpoint == "chat" else {"tokens": 7}
    events[1] = orjson.dumps(broken)
    sc = StreamCapture(endpoint, k=1)  # type: ignore[arg-type]
    assert all(sc.feed(payload).ok for payload in events)  # each chunk itself is JSON
    got = sc.result()
    assert got.tokens == ["a", "c"] and sc.bad_chunks == 1
    assert got.chosen.shape == (2,) and got.top.shape == (2, 1)


def test_stream_chunk_with_an_invalid_utf8_token_is_counted_and_skipped() -> None:
    obj = {
        "model": "m",
        "choices": [{"index": 0, "message": {"content": "ab"}, "finish_reason": "stop"}],
    }
    events = _stream_events(obj, "chat")
    good = b'{"content":[{"token":"a","logprob":-0.5,"top_logprobs":[]}]}'
    bad = b'{"content":[{"token":"\xff","logprob":-0.5,"top_logprobs":[]}]}'
    chunk = b'{"model":"m","choices":[{"index":0,"delta":{"content":"a"},"logprobs":%s}]}'
    events[1:1] = [chunk % good, chunk % bad]
    sc = StreamCapture("chat", k=1)
    assert all(sc.feed(payload).ok for payload in events)
    got = sc.result()
    assert got.tokens == ["a"] and sc.bad_chunks == 1


def test_raw_spans_are_views_not_copies() -> None:
    # The span machinery depends on msgspec.Raw referencing the input buffer.
    body = b'{"choices":[{"logprobs":{"content":[]}}]}'
    env = capture_structs._ENVELOPE.decode(body)
    assert capture_split._spans(body, env) == [(24, 38)]
    assert isinstance(env.choices[0].logprobs, msgspec.Raw)
