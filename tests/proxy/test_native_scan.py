"""The C scanner (``monitor/proxy/_logprob_scan.c``) against the pure-Python chat path.

The contract: ``cap._native_split`` (and ``scan_chat`` under it) accepts only a
subset of what ``split_body`` + ``logprob_arrays`` accept (None: "not sure, use
Python"), and wherever it accepts, its tokens, float32/int8 arrays, spans and
envelope are exactly the Python path's. It never crashes or reads out of bounds,
whatever the bytes.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import mmap
import random
import sys
from collections.abc import Callable
from decimal import Decimal, localcontext
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.proxy import capture as cap
from monitor.proxy import capture_arrays, capture_split, capture_structs
from monitor.proxy.captured import Captured, CaptureError, Endpoint
from monitor.proxy.stream_capture import StreamCapture
from tests.support.fake_upstream import random_response, render_json, shuffled

_spec = importlib.util.spec_from_file_location(
    "bench_responses", Path(__file__).resolve().parents[2] / "bench" / "responses.py"
)
assert _spec is not None and _spec.loader is not None
responses = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(responses)

SENT = -9999.0
F32_MAX = float(np.finfo(np.float32).max)
DECODE = msgspec.json.decode
# What the Python path's pieces raise on bodies they cannot read (capture_response
# turns each into CaptureError).
PYTHON_REJECTS = (CaptureError, msgspec.DecodeError, UnicodeDecodeError, RecursionError)

Arrays = tuple[list[str], np.ndarray, np.ndarray, np.ndarray]
Result = tuple[Any, list[Any], Arrays | None]


# --- the two paths and their comparison -------------------------------------------


def scanner() -> Any:
    assert cap._native is not None, "_logprob_scan.c was not compiled (pip install -e .)"
    return cap._native


def python_path(body: bytes, k: int, endpoint: Endpoint = "chat") -> Result | None:
    """The Python path's (envelope, spans, arrays); arrays None: no logprobs. None: rejected."""
    try:
        env, lp, spans = capture_split.split_body(body, endpoint)
        c0 = capture_split._choice0(env)
        span = spans[c0] if c0 >= 0 else None
        raw = memoryview(body)[span[0] : span[1]] if span else None
        arrays = None if lp is None else capture_arrays.logprob_arrays(lp, k, raw)
    except PYTHON_REJECTS:
        return None
    return env, spans, arrays


def native_path(body: bytes, k: int, endpoint: Endpoint = "chat") -> Result | None:
    scanner()
    return cap._native_split(body, k, endpoint)


def envelope_fields(env: Any) -> tuple[Any, ...]:
    """Everything capture reads from the envelope (logprobs Raw aside: spans cover it)."""
    choices = None
    if env.choices is not None:
        choices = [(c.index, c.message, c.delta, c.text, c.finish_reason) for c in env.choices]
    return env.model, env.usage, choices


def assert_same_arrays(nat: Arrays, py: Arrays, k: int, what: object = "") -> None:
    tokens, chosen, top, rank = nat
    p_tokens, p_chosen, p_top, p_rank = py
    n = len(p_tokens)
    assert tokens == p_tokens, what
    assert chosen.dtype == np.float32 and chosen.shape == (n,), what
    assert top.dtype == np.float32 and top.shape == (n, k) == p_top.shape, what
    assert rank.dtype == np.int8 and rank.shape == (n,), what
    assert np.array_equal(chosen, p_chosen), (what, chosen, p_chosen)
    assert np.array_equal(top, p_top), (what, top, p_top)
    assert np.array_equal(np.isneginf(top), np.isneginf(p_top)), what
    assert np.array_equal(rank, p_rank), (what, rank, p_rank)


def assert_same(nat: Result, py: Result | None, k: int, body: bytes = b"") -> None:
    what = body[:2000]
    assert py is not None, ("the scanner accepted a body the Python path rejects", what)
    n_env, n_spans, n_arrays = nat
    p_env, p_spans, p_arrays = py
    assert p_arrays is not None, ("the scanner found logprobs the Python path did not", what)
    assert n_arrays is not None
    assert list(n_spans) == list(p_spans), what
    assert envelope_fields(n_env) == envelope_fields(p_env), what
    assert_same_arrays(n_arrays, p_arrays, k, what)


def check(body: bytes, k: int, accept: bool | None = None, endpoint: Endpoint = "chat") -> bool:
    """Contract on one body; ``accept``: also require the scanner to (not) take it."""
    nat = native_path(body, k, endpoint)
    if accept is not None:
        assert (nat is not None) == accept, (
            "the scanner declined" if accept else "the scanner accepted",
            body[:2000],
        )
    if nat is not None:
        assert_same(nat, python_path(body, k, endpoint), k, body)
    return nat is not None


def python_value(value: bytes, k: int) -> Arrays | None:
    """logprob_arrays on one logprobs object (what the body path does to choice 0's)."""
    try:
        return capture_arrays.logprob_arrays(capture_structs._CHAT_NUMBERS.decode(value), k, value)
    except PYTHON_REJECTS:
        return None


def scan_value(buf: Any, k: int, start: int = 0) -> tuple[int, Arrays] | None:
    """scan_chat's arrays; its lazy form (a token table, decoded after) must say the same."""
    got = scanner().scan_chat(buf, start, k, DECODE)
    lazy = scanner().scan_chat(buf, start, k, DECODE, True)
    assert (got is None) == (lazy is None), "the lazy scan accepted otherwise"
    if got is None or lazy is None:
        return None
    end, tokens, chosen, top, rank = got
    assert (lazy[0], lazy[2:]) == (end, got[2:])
    assert scanner().decode_tokens(buf, lazy[1], DECODE) == tokens
    assert isinstance(end, int) and 0 <= start < end <= len(buf)
    assert isinstance(tokens, list) and all(type(t) is str for t in tokens)
    n = len(tokens)
    assert (len(chosen), len(top), len(rank)) == (4 * n, 4 * n * k, n)
    arrays = (
        tokens,
        np.frombuffer(chosen, np.float32),
        np.frombuffer(top, np.float32).reshape(n, k),
        np.frombuffer(rank, np.int8),
    )
    return end, arrays


def check_value(buf: Any, k: int, start: int = 0) -> bool:
    """scan_chat at ``start`` accepts only an object msgspec reads the same way."""
    got = scan_value(buf, k, start)
    if got is None:
        return False
    end, arrays = got
    value = bytes(buf[start:end])
    assert value.lstrip(b" \t\r\n")[:1] == b"{" and value[-1:] == b"}", value
    py = python_value(value, k)
    assert py is not None, ("scan_chat accepted what msgspec rejects", value[:2000])
    assert_same_arrays(arrays, py, k, value[:2000])
    return True


# --- body builders ------------------------------------------------------------------

Row = tuple[str, float, list[tuple[str, float]]]


def content_of(rows: list[Row]) -> list[dict[str, Any]]:
    return [
        {"token": t, "logprob": lp, "top_logprobs": [{"token": a, "logprob": v} for a, v in alts]}
        for t, lp, alts in rows
    ]


def envelope(lp: Any, text: str | None = "hi", **extra: Any) -> dict[str, Any]:
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": text},
        "logprobs": lp,
        "finish_reason": "stop",
    }
    return {
        "id": "chatcmpl-1",
        "model": "m",
        "choices": [choice],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4},
        **extra,
    }


def body_of(rows: list[Row], dumps: Callable[[Any], bytes] = orjson.dumps) -> bytes:
    return dumps(envelope({"content": content_of(rows)}))


def raw_body(content_json: str | bytes) -> bytes:
    """A body around a hand-written ``content`` array (exact number spellings, escapes)."""
    if isinstance(content_json, str):
        content_json = content_json.encode()
    return (
        b'{"id":"x","model":"m","choices":[{"index":0,"message":{"content":"t"},'
        b'"logprobs":{"content":' + content_json + b'},"finish_reason":"stop"}],'
        b'"usage":{"prompt_tokens":1,"completion_tokens":2}}'
    )


def first_logprobs_is_choice0(obj: dict[str, Any]) -> bool:
    """Choice 0 holds the body's first ``"logprobs"`` key and its value is an object."""
    for choice in obj["choices"]:
        if "logprobs" in choice:
            return choice["index"] == 0 and isinstance(choice["logprobs"], dict)
    return False


ROWS: list[Row] = [
    ("a", -0.25, [("a", -0.25), ("b", -1.5), ("c", -2.0)]),
    ('"', -1.5, [("a", -0.25), ('"', -1.5), ("\\", -3.0)]),
    ("é", -4.0, [("a", -0.5), ("b", -1.0), ("c", -2.0), ("é", -4.0)]),  # K+1: appended
    ("🙂", -9999.0, [("x", -0.1), ("y", -9999.0), ("🙂", -9999.0)]),
    ("q", -2.0, [("q", -2.0), ("p", -1.0), ("r", -3.0)]),  # sampled first (vLLM V1)
]


# --- 2. realistic bodies take the native path and agree ----------------------------


def test_scanner_is_built() -> None:
    scanner()


@pytest.mark.parametrize("seed", range(3))
def test_vllm_bodies(seed: int) -> None:
    for with_bytes in (True, False):
        body = responses.chat_body(200, 5, seed, with_bytes)
        assert b"-9999.0" in body and (b'"bytes":[' in body) == with_bytes
        for k in (5, 1, 3, 6, 8):  # asked K, fewer (rows longer than K), more (padding)
            check(body, k, accept=True)
    for kk in (1, 2, 8):
        check(responses.chat_body(50, kk, seed + 10), kk, accept=True)


def test_vllm_body_rows_are_really_awkward() -> None:
    """The bench bodies hold the cases the scanner must get right, not only easy rows."""
    obj = orjson.loads(responses.chat_body(200, 5, 0))
    rows = obj["choices"][0]["logprobs"]["content"]
    assert any(len(r["top_logprobs"]) == 6 for r in rows)  # sampled token appended
    assert any(t["logprob"] == SENT for r in rows for t in r["top_logprobs"])
    nat = native_path(orjson.dumps(obj), 5)
    assert nat is not None and nat[2] is not None
    assert (nat[2][3] == -1).any() and (nat[2][3] == 0).any() and (nat[2][3] > 0).any()
    assert np.isneginf(nat[2][2]).any()


def test_fake_upstream_random_responses() -> None:
    rng = random.Random(20240601)
    accepted = expected = 0
    for case in range(300):
        k = rng.choice([1, 2, 3, 5])
        obj = random_response(rng, "chat", k)
        body = orjson.dumps(obj) if case % 2 else render_json(obj, rng)
        expect = first_logprobs_is_choice0(obj)
        expected += expect
        accepted += check(body, k, accept=True if expect else None)
    assert expected > 100 and accepted >= expected


PRETTY: list[Callable[[Any], bytes]] = [
    lambda o: json.dumps(o, indent=2).encode(),
    lambda o: json.dumps(o, indent="\t", ensure_ascii=False).encode(),
    lambda o: json.dumps(o, indent=0, separators=(" ,", " : ")).encode(),
    lambda o: json.dumps(o, indent=1).replace("\n", "\r\n").encode() + b"\r\n ",
    lambda o: json.dumps(o, separators=(",\n\t", " :\r\n")).encode(),
]


@pytest.mark.parametrize("dumps", PRETTY)
def test_whitespace_and_pretty_printing(dumps: Callable[[Any], bytes]) -> None:
    for k in (1, 3, 4):
        check(body_of(ROWS, dumps), k, accept=True)


NESTED = {"x": [1, -2.5e-3, {"y": 'z"\\}]{', "n": None}, True, False, None, "\u00e9"], "e": {}}


def test_unknown_keys_at_every_level() -> None:
    lp: dict[str, Any] = {"content": content_of(ROWS)}
    for i, row in enumerate(lp["content"]):
        row.update(
            bytes=list(row["token"].encode()),
            extra=NESTED,
            logprobs={"content": [{"token": "zz", "logprob": 5}]},  # unknown here
            content=[1, 2],
            n=i,
        )
        for alt in row["top_logprobs"]:
            alt.update(
                bytes=list(alt["token"].encode()),
                top_logprobs=[{"token": "zz", "logprob": 0}],  # unknown at this level
                content=None,
                deep=[[[[[[[[["ok"]]]]]]]]],
            )
    lp.update(refusal=None, extra=NESTED)
    obj = envelope(lp, extra=NESTED, system_fingerprint="fp", prompt_logprobs=None)
    obj["choices"][0].update(stop_reason=None, extra=NESTED)
    obj["choices"][0]["message"].update(tool_calls=[], reasoning_content=None)
    for k in (1, 3, 5):
        check(orjson.dumps(obj), k, accept=True)
        check(json.dumps(obj, indent=2, ensure_ascii=False).encode(), k, accept=True)


def test_key_orders_permuted() -> None:
    rng = random.Random(5)
    obj = envelope({"content": content_of(ROWS)})
    for row in obj["choices"][0]["logprobs"]["content"]:
        row["bytes"] = [1, 2]
    for _ in range(40):
        check(orjson.dumps(shuffled(obj, rng)), rng.choice([1, 3, 4]), accept=True)


@pytest.mark.parametrize(
    "lp",
    [
        {"content": None},
        {"content": []},
        {},
        {"refusal": None},
        {"content": [{"token": "a", "logprob": -1.0, "top_logprobs": None}]},
        {"content": [{"token": "a", "logprob": -1.0}]},  # no top_logprobs key
        {"content": [{"token": "a", "logprob": -1.0, "top_logprobs": []}]},
        {"content": [{"logprob": -1.0, "top_logprobs": [{"token": "", "logprob": -1.0}]}]},
        {"content": [{"token": "a", "top_logprobs": [{"token": "a"}, {"token": "b"}]}]},
        {"content": [{"token": "a", "logprob": -1.0, "top_logprobs": [{"logprob": -1.0}]}]},
        {"content": [{}, {"top_logprobs": [{}, {}]}, {"token": "", "top_logprobs": [{}]}]},
        {
            "content": [
                {"token": "a", "logprob": -1.0, "top_logprobs": None},
                {"token": "b", "logprob": -2.0, "top_logprobs": [{"token": "b", "logprob": -2}]},
                {"token": "c", "logprob": -3.0, "top_logprobs": []},
            ]
        },
    ],
)
def test_nulls_empties_and_defaults(lp: dict[str, Any]) -> None:
    for k in (1, 2, 5):
        check(orjson.dumps(envelope(lp)), k, accept=True)
        check(orjson.dumps(envelope(lp, text=None)), k, accept=True)


TRICKY_TOKENS = ['"', "\\", "\n", "\t", "é", "\u00e9x", "🙂", "\x00", "\x1f", "/", 'a"b\\c', ""]


@pytest.mark.parametrize("ensure_ascii", [True, False])
def test_escaped_and_non_ascii_tokens(ensure_ascii: bool) -> None:
    rows: list[Row] = []
    for i, tok in enumerate(TRICKY_TOKENS):
        other = TRICKY_TOKENS[(i + 1) % len(TRICKY_TOKENS)]
        rows.append((tok, -1.0, [(other, -0.5), (tok, -1.0), ("z", -2.0)]))  # settled
        rows.append((tok, -1.0, [(other, -1.0), (tok, -1.0), ("z", -1.0)]))  # strings
        rows.append((tok, -3.0, [(other, -1.0), (tok + "x", -3.0)]))  # tie at the lowest
    for dumps in (
        lambda o: json.dumps(o, ensure_ascii=ensure_ascii).encode(),
        lambda o: json.dumps(o, ensure_ascii=ensure_ascii, indent=1).encode(),
    ):
        for k in (1, 2, 3):
            check(body_of(rows, dumps), k, accept=True)
    check(body_of(rows), 3, accept=True)


@pytest.mark.parametrize(
    "content",
    [
        # the same string spelled raw, escaped, and as a surrogate pair
        '[{"token":"\\u00e9","logprob":-1,"top_logprobs":[{"token":"é","logprob":-1},'
        '{"token":"\\u00E9","logprob":-1}]}]',
        '[{"token":"\\ud83d\\ude42","logprob":-2,"top_logprobs":[{"token":"🙂","logprob":-2},'
        '{"token":"x","logprob":-2}]}]',
        '[{"token":"🙂","logprob":-2,"top_logprobs":[{"token":"x","logprob":-2},'
        '{"token":"\\uD83D\\uDE42","logprob":-2}]}]',
        '[{"token":"\\/","logprob":-1,"top_logprobs":[{"token":"/","logprob":-1},'
        '{"token":"\\/","logprob":-1}]}]',
        '[{"token":"a\\"b","logprob":0,"top_logprobs":[{"token":"a\\u0022b","logprob":0}]}]',
        '[{"token":"\\b\\f\\n\\r\\t","logprob":-1,"top_logprobs":[{"token":"x","logprob":-1},'
        '{"token":"\\u0008\\u000c\\u000A\\u000d\\u0009","logprob":-5}]}]',
        '[{"token":"東京","logprob":-1,"top_logprobs":[{"token":"東京","logprob":-1},'
        '{"token":"京","logprob":-1}]}]',
    ],
)
def test_escape_spellings_of_one_string(content: str) -> None:
    for k in (1, 2, 3):
        check(raw_body(content), k, accept=True)


@pytest.mark.parametrize(
    "number",
    [
        "-1",
        "0",
        "-0",
        "-0.0",
        "-1.5e-05",
        "1E2",
        "-2.5E+1",
        "-1e-1",
        "-0.000001",
        "-12345678901234567890",
        "-123456789012345678901234567890",
        "-1e-400",
        "3.4028234663852886e38",
        "-1.401298464324817e-45",
        "-9999",
        "-9999.0",
        "-9999.00000000000000000001",
        "-10000",
        "-0.1000000000000000055511151231257827021181583404541015625",
        "-7.006492321624085354618647916449580656401309709382578858785341419448955413e-46",
    ],
)
def test_number_spellings(number: str) -> None:
    content = (
        f'[{{"token":"a","logprob":{number},"top_logprobs":[{{"token":"b","logprob":-0.5}},'
        f'{{"token":"a","logprob":{number}}},{{"token":"c","logprob":{number}}}]}}]'
    )
    for k in (1, 2, 3):
        # Longer than the scanner's number buffer: declining is allowed.
        check(raw_body(content), k, accept=True if len(number) <= 64 else None)


RANK_CASES: list[list[Row]] = [
    [("c", -3.0, [("a", -1.0), ("b", -2.0), ("c", -3.0)])],  # K+1 appended / at lowest
    [("z", -5.0, [("a", -1.0), ("b", -2.0)])],  # outside, not listed
    [("z", -2.0, [("a", -1.0), ("b", -2.0)])],  # outside, ties the lowest
    [("b", -1.0, [("a", -1.0), ("b", -1.0), ("c", -1.0)])],  # all tie: strings decide
    [("z", -1.0, [("a", -1.0), ("b", -1.0)])],  # ties, string absent
    [("b", -1.0, [("a", -0.5), ("b", -1.0), ("c", -1.0), ("d", -2.0)])],  # two ties
    [("c", -9999.0, [("a", -1.0), ("b", -9999.0), ("c", -9999.0)])],  # sentinel chosen
    [("c", -9999.0, [("c", -9999.0)])],
    [("b", -9999.0, [("a", -1.0), ("b", -1.0)])],  # sentinel chosen, token listed higher
    [("a", -2.0, [("a", -1.0), ("a", -2.0)])],  # duplicate strings, different values
    [("a", -1.0, [("a", -1.0), ("a", -1.0), ("b", -3.0)])],  # duplicates, equal values
    [("a", -1.0, [("b", -3.0), ("a", -2.0), ("a", -1.0)])],  # duplicates, unsorted
    [("b", -2.0, [("b", -2.0), ("a", -1.0), ("c", -3.0)])],  # unsorted (sampled first)
    [("a", 0.0, [("a", -0.0), ("b", 0.0)])],  # signed zeros
    [("a", -0.0, [("b", 0.0), ("a", -0.0)])],
    [("a", 0.5, [("b", -1.0), ("c", -2.0)])],  # chosen above every alternative
    [("a", -1.0, [("b", -9999.0), ("a", -1.0), ("c", -9999.0)])],  # sentinels unsorted
    [("a", -1.0, [("b", -0.5), ("a", -1.0), ("c", -2.0), ("d", -3.0), ("e", -4.0)])],  # K+3
    [
        ("a", -1.0, [("a", -1.0), ("b", -2.0)]),  # ragged rows: 2, 0, 1 and 3 alternatives
        ("b", -1.0, []),
        ("c", -9999.0, [("c", -9999.0)]),
        ("d", -3.0, [("x", -1.0), ("y", -2.0), ("d", -3.0)]),
    ],
    [("a", -1.0, [("a", -1.0)]) for _ in range(5)] + [("b", -2.0, [("a", -1.0), ("b", -2.0)])],
]


@pytest.mark.parametrize("rows", RANK_CASES)
def test_rank_cases(rows: list[Row]) -> None:
    for k in (1, 2, 3, 4):
        check(body_of(rows), k, accept=True)
        check(body_of(rows, lambda o: json.dumps(o, indent=1).encode()), k, accept=True)


def test_rank_values_are_the_expected_ones() -> None:
    """Spot-check that the shared answer is the documented one, not a shared mistake."""
    nat = native_path(body_of([r for case in RANK_CASES[:13] for r in case]), 2)
    assert nat is not None and nat[2] is not None
    assert nat[2][3].tolist() == [-1, -1, -1, 1, -1, 1, -1, 0, 1, 0, 0, 0, 1]
    np.testing.assert_array_equal(nat[2][2][6], np.array([-1.0, -np.inf], np.float32))


# --- 3. property test ------------------------------------------------------------

TOKEN_ALPHABET = ["a", "b", "ab", "", " ", '"', "\\", '\\"', "\n", "é", "東京", "🙂", "\x00", "/"]
EXTRA_KEYS = ["bytes", "x", "logprobs", "content", "top_logprobs", "ключ", "n"]
ESCAPED_KEY = 'tok"en'  # the scanner must decline it: an escaped key might spell one of its own

leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=4)
)
nested = st.recursive(
    leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=5,
)


WIDE = st.floats(-3e38, 3e38)
SMALL_FLOATS = st.floats(-1e-3, 1e-3)
F32_LOGPROBS = st.floats(-30, 0, width=32)


class Builder:
    """Builds one example's logprobs from a few hypothesis draws and a seeded rng.

    Hypothesis picks the knobs and pools of values (its float heuristics find the
    edge cases: -0.0, subnormals, the float32 extremes); the rng spends them on
    up to ~300 objects, cheaply. Per-example knobs keep rare events rare per body.
    """

    def __init__(self, draw: st.DrawFn) -> None:
        self.wild = draw(st.integers(0, 4)) == 0  # logprobs beyond float32's range
        self.escaped = draw(st.integers(0, 4)) == 0  # an escaped key here and there
        self.extra_rate = draw(st.sampled_from([0.0, 0.05, 0.3]))  # objects with extra keys
        self.missing_rate = draw(st.sampled_from([0.0, 0.0, 0.05]))  # no token / logprob
        wide = st.floats(allow_nan=False, allow_infinity=False) if self.wild else WIDE
        self.floats = draw(st.lists(wide, min_size=1, max_size=4))
        self.floats += draw(st.lists(SMALL_FLOATS, max_size=3))
        self.f32 = draw(st.lists(F32_LOGPROBS, min_size=1, max_size=8))  # vLLM style
        self.nested = draw(st.lists(nested, min_size=1, max_size=4))
        self.rng = random.Random(draw(st.integers(0, 2**32 - 1)))

    def logprob(self, chosen: float) -> float:
        r = self.rng.random()
        if r < 0.1:
            return self.rng.choice(self.floats)
        if r < 0.15:
            return self.rng.randint(-30, 3)
        if r < 0.2:
            return SENT
        if r < 0.45:
            return chosen
        return self.rng.choice(self.f32)

    def extras(self, forbidden: tuple[str, ...]) -> dict[str, Any]:
        if self.rng.random() >= self.extra_rate:
            return {}
        names = [n for n in EXTRA_KEYS if n not in forbidden]
        if self.escaped:
            names.append(ESCAPED_KEY)
        keys = self.rng.sample(names, self.rng.randint(1, 3))
        return {k: self.rng.choice(self.nested) for k in keys}

    def permuted(self, d: dict[str, Any]) -> dict[str, Any]:
        items = list(d.items())
        self.rng.shuffle(items)
        return dict(items)

    def alternative(self, chosen_tok: str, chosen_lp: float) -> dict[str, Any]:
        alt: dict[str, Any] = {}
        if self.rng.random() >= self.missing_rate:
            alt["token"] = self.rng.choice([*TOKEN_ALPHABET, chosen_tok, chosen_tok])
        if self.rng.random() >= self.missing_rate:
            alt["logprob"] = self.logprob(chosen_lp)
        alt.update(self.extras(("token", "logprob")))
        return self.permuted(alt)

    def row(self, k: int) -> dict[str, Any]:
        tok = self.rng.choice(TOKEN_ALPHABET)
        lp = self.logprob(-1.0)
        entry: dict[str, Any] = {}
        if self.rng.random() >= self.missing_rate:
            entry["token"] = tok
        if self.rng.random() >= self.missing_rate:
            entry["logprob"] = lp
        else:
            lp = SENT
        shape = self.rng.random()
        if shape < 0.05:
            entry["top_logprobs"] = None
        elif shape > 0.1:  # else: absent
            n_alts = self.rng.randint(0, k + 2)
            entry["top_logprobs"] = [self.alternative(tok, lp) for _ in range(n_alts)]
        entry.update(self.extras(("token", "logprob", "top_logprobs")))
        return self.permuted(entry)


def plain(lp: dict[str, Any]) -> bool:
    """Nothing in the objects the scanner reads that it may decline: every logprob a
    finite float32, no key spelled with an escape."""
    objects = [lp]
    for r in lp.get("content") or []:
        objects += [r, *(r.get("top_logprobs") or ())]
    return all(abs(o.get("logprob", 0)) <= F32_MAX and ESCAPED_KEY not in o for o in objects)


@st.composite
def chat_case(draw: st.DrawFn) -> tuple[bytes, int, bool]:
    build = Builder(draw)
    k = draw(st.integers(1, 8))
    lp: dict[str, Any] = {}
    if draw(st.integers(0, 14)):
        lp["content"] = [build.row(k) for _ in range(draw(st.integers(0, 30)))]
    else:
        lp["content"] = None
    lp.update(build.extras(("content",)))
    lp = build.permuted(lp)

    choice0 = {
        "index": 0,
        "message": {"role": "assistant", "content": draw(st.text(max_size=8))},
        "logprobs": lp,
        "finish_reason": draw(st.sampled_from(["stop", "length", None])),
    }
    choices = [build.permuted(choice0)]
    for i in range(1, draw(st.integers(0, 2)) + 1):
        other: dict[str, Any] = {"index": i, "message": {"content": "o"}}
        shape = draw(st.integers(0, 2))
        if shape == 1:
            other["logprobs"] = None
        elif shape == 2:
            other["logprobs"] = {"content": [{"token": "o", "logprob": -1.0}]}
        choices.insert(draw(st.integers(0, len(choices))), build.permuted(other))
    obj: dict[str, Any] = {"id": "c", "model": draw(st.sampled_from(["m", None, "東京"]))}
    obj["choices"] = choices
    if draw(st.booleans()):
        obj["usage"] = {"prompt_tokens": 2, "completion_tokens": draw(st.integers(0, 99))}
    obj = build.permuted(obj)
    decoy = draw(st.integers(0, 9)) == 0
    if decoy:  # a "logprobs" key ahead of every choice's
        obj = {"logprobs": {"content": []}, **obj}

    renderer = draw(st.sampled_from(["orjson"] * 3 + ["dumps", "dumps_indent", "dumps_ascii"]))
    if renderer == "orjson":
        body = orjson.dumps(obj)
    else:
        body = json.dumps(
            obj,
            indent=2 if renderer == "dumps_indent" else None,
            ensure_ascii=renderer == "dumps_ascii" or draw(st.booleans()),
        ).encode()
    expect = renderer == "orjson" and not decoy and first_logprobs_is_choice0(obj) and plain(lp)
    return body, k, expect


@settings(
    max_examples=600,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(chat_case())
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_property_native_is_python_where_it_accepts(case: tuple[bytes, int, bool]) -> None:
    body, k, expect = case
    # Plain orjson bodies with finite float32 logprobs must take the native path,
    # so this cannot pass by declining everything.
    check(body, k, accept=True if expect else None)
    start = capture_split._logprobs_start(body)
    if start >= 0:
        check_value(body, k, start)


# --- 4. decimal -> float32 exactness -----------------------------------------------


def f32_bits(x: Any) -> int:
    return int(np.array([x], np.float32).view(np.uint32)[0])


def decimal_string(rng: random.Random) -> str:
    nd = rng.randint(1, 25)
    digits = rng.choice("123456789") + "".join(rng.choice("0123456789") for _ in range(nd - 1))
    form = rng.randrange(3)
    if form == 0:  # d.ddd
        point = rng.randint(1, nd)
        mant = digits[:point] + ("." + digits[point:] if point < nd else "")
    elif form == 1:  # 0.000ddd
        mant = "0." + "0" * rng.randint(0, 6) + digits
    else:
        mant = digits
    exp = ""
    if rng.random() < 0.7:
        e = rng.randint(-30, 30)
        exp = rng.choice("eE") + (rng.choice(["", "+"]) if e >= 0 else "-") + str(abs(e))
    return rng.choice(["", "-", "-"]) + mant + exp


def midpoint_strings(rng: random.Random, a: np.float32) -> list[str]:
    """Decimal spellings at, just off, and rounded near a float32 rounding midpoint."""
    b = np.nextafter(a, np.float32(np.inf), dtype=np.float32)
    if not np.isfinite(b):
        return []
    with localcontext() as ctx:
        ctx.prec = 400
        mid = (Decimal(float(a)) + Decimal(float(b))) / 2  # exact
        out = [format(mid.normalize(), "e")]
        for places in (9, 10, 12, 15, 17, 19, 20, 22, 25):
            tiny = abs(mid) * Decimal(10) ** -rng.randint(8, 30)
            for v in (mid, mid + tiny, mid - tiny):
                out.append(format(v, f".{places - 1}e"))
    return out


def number_corpus(seed: int) -> list[str]:
    rng = random.Random(seed)
    nprng = np.random.default_rng(seed)
    out: list[str] = []
    for _ in range(1500):  # float64 reprs over the whole range
        out.append(repr(rng.uniform(-1, 1) * 10 ** rng.uniform(-45, 40)))
    for _ in range(1500):  # float32 values as float64 reprs (what vLLM sends)
        out.append(repr(float(np.float32(rng.uniform(-30, 0)))))
    bits = nprng.integers(0, 2**32, 1500, dtype=np.uint64).astype(np.uint32).view(np.float32)
    out += [repr(float(x)) for x in bits if np.isfinite(x)]  # incl. subnormals, huge
    out += [decimal_string(rng) for _ in range(3000)]
    for _ in range(400):
        a = np.float32(rng.uniform(-30, 0) if rng.random() < 0.5 else rng.uniform(-1, 1))
        a *= np.float32(10.0 ** rng.randint(-20, 20))
        out += midpoint_strings(rng, a)
    return out


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_decimal_to_float32_is_exact() -> None:
    corpus = number_corpus(99)
    assert len(corpus) > 15000
    declined = 0
    for s in corpus:
        value = (
            f'{{"content":[{{"token":"a","logprob":{s},'
            f'"top_logprobs":[{{"token":"b","logprob":{s}}}]}}]}}'
        ).encode()
        got = scan_value(value, 1)
        want = float(s)
        in_range = abs(want) <= F32_MAX
        if got is None:
            # Allowed only for spellings too long for the scanner or outside float32.
            assert len(s) > 64 or not in_range, s
            declined += 1
            continue
        assert in_range, s
        _, (_, chosen, top, _) = got
        assert f32_bits(chosen[0]) == f32_bits(want), (s, chosen[0], np.float32(want))
        assert f32_bits(top[0, 0]) == f32_bits(-np.inf if want <= SENT else want), s
        py = python_value(value, 1)  # msgspec's parse, cast as the Python path does
        assert py is not None and py[1][0] == chosen[0], s
    assert declined < len(corpus) // 10


def naive_float32(s: str) -> np.float32 | None:
    """A fast path with no fallback: digits * 10^e in float64, cast (None: not eligible)."""
    mant, _, exp = s.lower().partition("e")
    whole, _, frac = mant.lstrip("-").partition(".")
    digits = (whole + frac).lstrip("0") or "0"
    e10 = int(exp or 0) - len(frac)
    if len(digits) > 19 or not -22 <= e10 <= 22:
        return None
    d = float(int(digits))
    d = d / 10.0**-e10 if e10 < 0 else d * 10.0**e10
    return np.float32(-d if mant.startswith("-") else d)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_number_corpus_holds_the_hard_cases() -> None:
    """The corpus must catch a fast path that skips its fallback near float32 midpoints."""
    rng = random.Random(3)
    assert len({f32_bits(float(s)) for s in midpoint_strings(rng, np.float32(-1.2345678))}) == 2
    corpus = number_corpus(99)
    wrong = 0
    for s in corpus:
        naive = naive_float32(s)
        wrong += naive is not None and f32_bits(naive) != f32_bits(float(s))
    assert wrong >= 10


# --- 5. invalid and adversarial input ------------------------------------------------

SMALL = body_of(ROWS[:4])


def test_truncated_bodies_are_declined() -> None:
    body = SMALL
    start = capture_split._logprobs_start(body)
    end = scan_value(body, 3, start)
    assert end is not None
    for cut in range(len(body)):
        prefix = body[:cut]
        assert native_path(prefix, 3) is None, cut
        if start < cut < end[0]:
            assert scanner().scan_chat(prefix, start, 3, DECODE) is None, cut
    # A complete logprobs value is accepted right at its end, and not earlier.
    value = body[start : end[0]]
    assert check_value(value, 3)
    for cut in range(len(value)):
        assert scanner().scan_chat(value[:cut], 0, 3, DECODE) is None


def test_every_start_offset() -> None:
    body = SMALL
    accepted = 0
    for start in range(-3, len(body) + 3):
        for k in (1, 4):
            accepted += check_value(body, k, start)
    assert accepted >= 2  # at least the logprobs value itself (before and after its space)


MUTATION_BYTES = b'"\\{}[],:\x00\x01\x1f\x7f\xff\xc3\xe2\xed0-e.+ nt'


def mutate(body: bytes, rng: random.Random, lo: int, hi: int) -> bytes:
    b = bytearray(body)
    for _ in range(rng.randint(1, 3)):
        pos = rng.randrange(lo, min(hi, len(b))) if rng.random() < 0.85 else rng.randrange(len(b))
        kind = rng.randrange(6)
        byte = rng.choice(MUTATION_BYTES) if rng.random() < 0.8 else rng.randrange(256)
        if kind <= 2:
            b[pos] = byte
        elif kind == 3:
            b.insert(pos, byte)
        elif kind == 4:
            del b[pos]
        else:
            n = rng.randint(1, 8)
            b[pos:pos] = b[pos : pos + n]
    return bytes(b)


def fuzz_bases() -> list[bytes]:
    rows: list[Row] = [*ROWS, *RANK_CASES[3], *RANK_CASES[9], ("\\u", -1e-5, [("x", -1e-5)])]
    obj = envelope({"content": content_of(rows)})
    obj["choices"][0]["logprobs"]["content"][0]["bytes"] = [97, [{"k": "v"}]]
    return [
        orjson.dumps(obj),
        json.dumps(obj, indent=1).encode(),
        json.dumps(obj).encode(),  # ensure_ascii: \u escapes and surrogate pairs
        responses.chat_body(4, 3, 1),
    ]


def utf8(body: bytes) -> bool:
    try:
        body.decode()
    except UnicodeDecodeError:
        return False
    return True


def mutants(seed: int, n: int, valid_utf8: bool) -> list[tuple[bytes, int, int]]:
    """(body, k, original logprobs start): ``n`` seeded mutants of each fuzz base."""
    rng = random.Random(seed)
    out = []
    for base in fuzz_bases():
        start = capture_split._logprobs_start(base)
        made = 0
        while made < n:
            body = mutate(base, rng, start, len(base) - 60)
            if utf8(body) == valid_utf8:
                out.append((body, rng.choice([1, 3, 5]), start))
                made += 1
    return out


def run_mutants(cases: list[tuple[bytes, int, int]]) -> int:
    accepted = 0
    for body, k, start in cases:
        accepted += check(body, k)
        s = capture_split._logprobs_start(body)
        check_value(body, k, s if s >= 0 else start)
    return accepted


def test_random_mutations() -> None:
    for base in fuzz_bases():
        assert check(base, 3, accept=True)
    cases = mutants(8675309, 2000, valid_utf8=True)
    assert len(cases) == 2000 * len(fuzz_bases())
    # Many mutants stay valid (a digit for a digit, a space): both paths really ran.
    assert run_mutants(cases) > 1000


def test_random_mutations_invalid_utf8() -> None:
    run_mutants(mutants(8675309, 400, valid_utf8=False))


def lp_body(row_json: str, k_alts: str = '{"token":"b","logprob":-2}') -> bytes:
    return raw_body(f'[{{"token":"a","logprob":-1,"top_logprobs":[{k_alts}]}},{row_json}]')


ALT = '{"token":"b","logprob":-2,"bytes":[98]}'


@pytest.mark.parametrize(
    "row",
    [
        f'{{"token":\t"a","logprob": -1,"bytes":[97],"top_logprobs":[{ALT}]}}',
        f'{{"token":"a","logprob":-1,"bytes":[97, 98],"top_logprobs":[{ALT}]}}',
        f'{{"token":"a","logprob":-1,"bytes":null,"top_logprobs":[{ALT}]}}',
        f'{{"token":"a","logprob":-1,"bytes":[],"top_logprobs":[{ALT}]}}',
        '{"token":"a","logprob":-1,"bytes":[97],"top_logprobs":null}',
        '{"token":"a","logprob":-1,"bytes":[97],"top_logprobs":[]}',
        f'{{"token":"a","logprob":-1,"bytes":[97],"top_logprobs": [{ALT}]}}',
        f'{{"token":"a","logprob":-1,"bytes":[97],"top_logprobs":[{ALT}],"x":{{"y":[1]}}}}',
        f'{{"token":"a","logprob":-1,"top_logprobs":[{ALT}],"bytes":[97]}}',
        f'{{"token":"a","bytes":[97],"logprob":-1,"top_logprobs":[{ALT}]}}',
        '{"token":"a","logprob":-1,"bytes":[97],"top_logprobs":'
        '[{"token":"b","logprob":-2,"bytes":[98],"top_logprobs":[{"token":"z"}]}]}',
    ],
)
def test_vllm_layout_and_its_neighbours_are_read(row: str) -> None:
    """Entries spelled as vLLM does are read member by member as literals; each
    variation here leaves that path at another point and must read the same."""
    check(lp_body(row), 2, accept=True)


def int_array_spellings(rng: random.Random) -> list[str]:
    """Arrays of integers, valid and not, long enough to cross the scanner's 16-byte
    blocks at every phase: empty elements, leading zeros, signs and other bytes
    placed anywhere, first and last elements included."""
    out = ["", "0", "0,0", "00", "01", ",1", "1,", "1,,2", "-0", "-01", "255"]
    for _ in range(600):
        items = [str(rng.choice([0, rng.randrange(1, 10), rng.randrange(10, 256)]))]
        items += [str(rng.randrange(0, 100_000)) for _ in range(rng.randrange(0, 24))]
        text = ",".join(items)
        r = rng.random()
        if r < 0.5 and text:
            at = rng.randrange(len(text) + 1)
            bad = rng.choice(["0", ",", ",,", "-", "00", "01", ",0", ",01", " ", ".5", "e1", "a"])
            text = text[:at] + bad + text[at:]
        elif r < 0.6:
            spell = ["0", "00", "-1", "10"]
            text = ",".join(rng.choice(spell) for _ in range(rng.randrange(1, 20)))
        out.append(text)
    return out


def test_integer_arrays_at_every_block_phase() -> None:
    """The "bytes" skip accepts exactly the arrays that are valid JSON, wherever they sit."""
    rng = random.Random(2024)
    accepted = 0
    for text in int_array_spellings(rng):
        try:
            valid = isinstance(json.loads(f"[{text}]"), list)
        except ValueError:
            valid = False
        for pad in range(0, 17, 3):  # shifts the array against the 16-byte blocks
            row = f'{{"token":"{"x" * pad}","logprob":-1,"bytes":[{text}]}}'
            accepted += check(lp_body(row), 2, accept=valid if " " not in text else None)
    assert accepted > 1000


BAD_STRINGS = [r"\x", r"\u12", r"\u12g4", r"\ud800", r"\udc00", r"\ud800\u0041", r"\ud800x",
               "\\", "\x01", "\x1f", r"\U00e9", r"\ud83d\ud83d", "\t"]  # fmt: skip


@pytest.mark.parametrize("bad", BAD_STRINGS)
def test_invalid_strings_are_declined(bad: str) -> None:
    places = [
        f'{{"token":"{bad}","logprob":-1}}',  # a chosen token
        f'{{"token":"c","logprob":-1,"top_logprobs":[{{"token":"{bad}","logprob":-3}}]}}',
        f'{{"token":"c","logprob":-1,"x":"{bad}"}}',  # an unknown key's value
        f'{{"token":"c","logprob":-1,"x{bad}":1}}',  # a key
        f'{{"token":"c","logprob":-1,"x":[{{"{bad}":[]}}]}}',
    ]
    for place in places:
        body = lp_body(place)
        assert native_path(body, 2) is None, body
        assert python_path(body, 2) is None, body  # JSON itself is invalid
        start = capture_split._logprobs_start(body)
        assert scanner().scan_chat(body, start, 2, DECODE) is None


BAD_NUMBERS = ["01", "1.", ".5", "-", "1e", "+1", "NaN", "-NaN", "Infinity", "-Infinity", "1e400",
               "-1e39", "--1", "1e+", "0x10", "1.5.5", "-.5", "1e5.5", "-01.5", "- 1", "tru",
               "null", "true", '"-1"', "[]", "{}", "-3.4028236e38"]  # fmt: skip


@pytest.mark.parametrize("bad", BAD_NUMBERS)
def test_invalid_logprobs_are_declined(bad: str) -> None:
    places = [
        f'{{"token":"c","logprob":{bad}}}',
        f'{{"token":"c","logprob":-1,"top_logprobs":[{{"token":"d","logprob":{bad}}}]}}',
    ]
    if bad not in ("1e400", "-1e39", "-3.4028236e38", "null", "true", '"-1"', "[]", "{}"):
        places.append(f'{{"token":"c","logprob":-1,"x":[{bad}]}}')  # invalid JSON anywhere
    for place in places:
        body = lp_body(place)
        assert native_path(body, 2) is None, body
        start = capture_split._logprobs_start(body)
        assert scanner().scan_chat(body, start, 2, DECODE) is None


@pytest.mark.parametrize(
    "content",
    [
        '[{"token":"a","logprob":-1},]',  # trailing commas
        '[{"token":"a","logprob":-1,}]',
        '[{"token":"a","logprob":-1,"top_logprobs":[{"token":"a","logprob":-1},]}]',
        '[{"token":"a","logprob":-1,"top_logprobs":[{"token":"a","logprob":-1,}]}]',
        '[{"token":"a","logprob":-1,"x":[1,]}]',
        '[{"token":"a","logprob":-1,"x":{"y":1,}}]',
        '[,{"token":"a","logprob":-1}]',
        '[{"token":"a","logprob":-1}{"token":"b"}]',  # missing separators
        '[{"token":"a" "logprob":-1}]',
        '[{"token" "a","logprob":-1}]',
        '[{"token":"a","logprob":-1,"x":[1 2]}]',
        '[{"token":"a","logprob":-1,"logprob":-2}]',  # duplicate keys
        '[{"token":"a","token":"b","logprob":-1}]',
        '[{"token":"a","logprob":-1,"top_logprobs":[],"top_logprobs":[]}]',
        '[{"token":"a","logprob":-1,"top_logprobs":[{"token":"a","token":"b"}]}]',
        '[{"token":"a","logprob":-1,"top_logprobs":[{"logprob":-1,"logprob":-1}]}]',
        # vLLM's layout (read as literals), then a flaw
        '[{"token":"a","logprob":-1,"bytes":[97],"top_logprobs":[],"token":"b"}]',
        '[{"token":"a","logprob":-1,"bytes":[97],"top_logprobs":[],"logprob":-2}]',
        '[{"token":"a","logprob":-1,"bytes":[97],"top_logprobs":[],"top_logprobs":[]}]',
        '[{"token":"a","logprob":-1,"bytes":[97,],"top_logprobs":[]}]',
        '[{"token":"a","logprob":-1,"bytes":[97],"top_logprobs":[{"token":"b","logprob":-2,}]}]',
        '[{"token":"a","logprob":-1,"bytes":[97],"top_logprobs":[]]',
        '[{"token":"a","logprob":null}]',  # nulls and wrong types
        '[{"token":null,"logprob":-1}]',
        '[{"token":"a","logprob":-1,"top_logprobs":[{"token":"a","logprob":null}]}]',
        '[{"token":"a","logprob":-1,"top_logprobs":[{"token":null,"logprob":-1}]}]',
        '[{"token":"a","logprob":-1,"top_logprobs":[null]}]',
        '[{"token":"a","logprob":-1,"top_logprobs":{}}]',
        '[{"token":"a","logprob":-1,"top_logprobs":"x"}]',
        '[{"token":5,"logprob":-1}]',
        '[{"token":"a","logprob":"-1"}]',
        '[{"token":"a","logprob":true}]',
        '[{"token":"a","logprob":[-1]}]',
        "[null]",
        "[1]",
        '["a"]',
        "[[]]",
        '[{"token":"a","logprob":-1,"x":nul}]',  # broken literals
        '[{"token":"a","logprob":-1,"x":True}]',
        '[{"token":"a","logprob":-1,"x":undefined}]',
        '[{"token":"a","logprob":-1,"top_logprobs":nulll}]',
        '[{"token":"a","logprob":-1,"top\\u005flogprobs":[]}]',  # escaped key: unsure
        '[{"tok\\u0065n":"b","logprob":-1}]',
        '[{"token":"a","logprob":-1}',  # unbalanced
        '[{"token":"a","logprob":-1}]]',
        '[{"token":"a","logprob":-1]}',
        '{"token":"a","logprob":-1}',
        '"x"',
        "1",
    ],
)
def test_malformed_or_unsure_logprobs_are_declined(content: str) -> None:
    body = raw_body(content)
    assert native_path(body, 2) is None, body
    start = capture_split._logprobs_start(body)
    assert scanner().scan_chat(body, start, 2, DECODE) is None
    for k in (1, 3):
        check(body, k)


@pytest.mark.parametrize(
    "value",
    [
        b'{"content":null,"content":[]}',
        b'{"content":[],"content":[]}',
        b'{"content":{}}',
        b'{"content":"x"}',
        b'{"cont\\u0065nt":[]}',
        b'{"content":[]',
        b'{"content":[]}}',
        b'{"content":[],}',
        b'{,"content":[]}',
        b'{"content" []}',
        b"{",
        b"{}}",
        b"[]",
        b"",
        b"   ",
        b"null",
    ],
)
def test_malformed_logprobs_objects(value: bytes) -> None:
    # scan_chat reads one object ("{}}" has one); what follows is _skeleton's to check.
    check_value(value, 3)
    body = b'{"choices":[{"index":0,"logprobs":' + value + b',"finish_reason":"stop"}],"model":"m"}'
    check(body, 3, accept=False)


@pytest.mark.parametrize("where", ["lp", "row", "alt"])
def test_deep_nesting_is_declined_without_crashing(where: str) -> None:
    for deep in (b"[" * 10000 + b"]" * 10000, b"[" * 10000, b'{"a":' * 10000 + b"1" + b"}" * 10000):
        alt = b'{"token":"a","logprob":-1' + (b',"x":' + deep if where == "alt" else b"") + b"}"
        row = b'{"token":"a","logprob":-1,"top_logprobs":[' + alt + b"]"
        row += (b',"x":' + deep if where == "row" else b"") + b"}"
        value = b'{"content":[' + row + b"]" + (b',"x":' + deep if where == "lp" else b"") + b"}"
        assert scanner().scan_chat(value, 0, 2, DECODE) is None
        assert native_path(b'{"choices":[{"index":0,"logprobs":' + value + b"}]}", 2) is None
    # Moderate nesting (well under the limit) is fine.
    ok = b'{"content":[{"token":"a","logprob":-1,"x":' + b"[" * 40 + b"]" * 40 + b"}]}"
    assert check_value(ok, 2)


@pytest.mark.parametrize(
    "bad",
    [b"\xff", b"a\xc3", b"\xc3(", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82"],
)
def test_invalid_utf8_in_a_chosen_token(bad: bytes) -> None:
    body = raw_body(
        b'[{"token":"' + bad + b'","logprob":-1,"top_logprobs":[{"token":"x","logprob":-1}]}]'
    )
    assert native_path(body, 2) is None
    assert python_path(body, 2) is None
    # ...and where the numbers alone would not need the strings (settled row).
    body = raw_body(
        b'[{"token":"' + bad + b'","logprob":-1,"top_logprobs":[{"token":"x","logprob":-0.5},'
        b'{"token":"y","logprob":-1},{"token":"z","logprob":-2}]}]'
    )
    assert native_path(body, 2) is None
    assert python_path(body, 2) is None


def test_invalid_utf8_in_an_alternative_agrees_where_no_string_is_needed() -> None:
    """msgspec skips alternatives' strings unread when numbers settle every rank."""
    body = raw_body(
        b'[{"token":"a","logprob":-1,"top_logprobs":[{"token":"\xff","logprob":-0.5},'
        b'{"token":"a","logprob":-1},{"token":"\xc3","logprob":-2}],"x":"\xff"}]'
    )
    check(body, 2, accept=True)
    # A row the numbers leave open compares that row's strings: both decline.
    body = raw_body(
        b'[{"token":"a","logprob":-1,"top_logprobs":[{"token":"\xff","logprob":-1},'
        b'{"token":"a","logprob":-1}]}]'
    )
    assert native_path(body, 2) is None and python_path(body, 2) is None


def test_invalid_utf8_in_another_rows_alternative() -> None:
    """Once one row needs token strings, the Python path decodes every alternative's,
    so invalid UTF-8 in any of them is a rejection; the scanner declines too."""
    body = raw_body(
        b'[{"token":"a","logprob":-1,"top_logprobs":[{"token":"a","logprob":-1},'
        b'{"token":"b","logprob":-1}]},'  # tie: strings needed
        b'{"token":"c","logprob":-1,"top_logprobs":[{"token":"c","logprob":-1},'
        b'{"token":"\xff","logprob":-2}]}]'  # settled by numbers, invalid UTF-8
    )
    check(body, 2)


class Guarded:
    """An mmap whose usable middle is fenced by unreadable (PROT_NONE) pages: data placed
    against a fence makes a read one byte outside it fault instead of going unnoticed."""

    def __init__(self, size: int) -> None:
        page = mmap.PAGESIZE
        self.lo = page
        self.hi = page + -(-max(size, 1) // page) * page
        self.map = mmap.mmap(-1, self.hi + page)
        mprotect = ctypes.CDLL(None, use_errno=True).mprotect
        mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        window = (ctypes.c_char * len(self.map)).from_buffer(self.map)
        base = ctypes.addressof(window)
        for off in (0, self.hi):
            assert mprotect(base + off, page, 0) == 0, ctypes.get_errno()  # 0: PROT_NONE
        del window

    def at_end(self, data: bytes) -> memoryview:
        self.map[self.hi - len(data) : self.hi] = data
        return memoryview(self.map)[self.hi - len(data) : self.hi]

    def at_start(self, data: bytes) -> memoryview:
        self.map[self.lo : self.lo + len(data)] = data
        return memoryview(self.map)[self.lo : self.lo + len(data)]


@pytest.mark.skipif(sys.platform != "linux", reason="guard pages via libc mprotect")
def test_no_read_outside_the_buffer() -> None:
    """Truncations and mutants placed flush against an unreadable page: an over-read faults."""
    bases = fuzz_bases()
    fence = Guarded(max(map(len, bases)) + 64)
    cases = [(base[:cut], 3) for base in bases[:2] for cut in range(len(base) + 1)]
    cases += [(body, k) for body, k, _ in mutants(11, 300, valid_utf8=True)]
    cases += [(body, k) for body, k, _ in mutants(12, 100, valid_utf8=False)]
    for data, k in cases:
        s = max(capture_split._logprobs_start(data), 0)
        for place in (fence.at_end, fence.at_start):
            with place(data) as view:
                scan_value(view, k, s)
    # Values that stop mid-token right at the fence, for every kind of token.
    start = capture_split._logprobs_start(SMALL)
    got = scan_value(SMALL, 3, start)
    assert got is not None
    value = SMALL[start : got[0]]
    for cut in range(len(value)):
        with fence.at_end(value[:cut]) as view:
            assert scan_value(view, 3) is None
    for tail in (b"-", b"1e", b"1.", b'"\\', b'"\\u12', b'"\\ud83d', b'"\\ud83d\\', b"tru", b"nul"):
        with fence.at_end(b'{"content":[],"x":' + tail) as view:
            assert scan_value(view, 3) is None
    fence.map.close()


def test_direct_calls_with_odd_arguments() -> None:
    body = SMALL
    start = capture_split._logprobs_start(body)
    scan = scanner().scan_chat
    for s in (-1, -(2**40), len(body) + 1, len(body), 2**40, -(2**62)):
        assert scan(body, s, 3, DECODE) is None
    for k in (0, -1, 128, 200, 2**40):
        assert scan(body, start, k, DECODE) is None
    assert cap._native_split(body, 0) is None and cap._native_split(body, 200) is None
    for k in (1, 127):
        assert check_value(body, k, start)
    # Any contiguous buffer reads the same as bytes; offsets are from the view's start.
    view = memoryview(b"xx" + body + b"yy")[2:-2]
    via_view, via_bytes = scan_value(view, 3, start), scan_value(body, 3, start)
    assert via_view is not None and via_bytes is not None
    assert via_view[0] == via_bytes[0]
    assert_same_arrays(via_view[1], via_bytes[1], 3)
    assert check_value(view, 3, start) and check_value(bytearray(body), 3, start)
    assert scan_value(memoryview(body[start:]), 3) is not None
    with pytest.raises((BufferError, TypeError, ValueError)):
        scan(memoryview(body)[::2], 0, 3, DECODE)
    with pytest.raises(TypeError):
        scan("not bytes", 0, 3, DECODE)
    # A decode that misbehaves makes the scanner decline or raise, never crash.
    escaped = raw_body('[{"token":"\\n","logprob":-1,"top_logprobs":[]}]')
    s = capture_split._logprobs_start(escaped)
    assert scan(escaped, s, 3, lambda b: 5) is None
    assert scan(escaped, s, 3, lambda b: 1 / 0) is None
    assert check_value(escaped, 3, s)


def test_tokens_are_decoded_only_when_read() -> None:
    """The request path builds no token strings unless it reads them (answer_span)."""
    body = responses.chat_body(50, 5, 3)
    captured = cap.capture_response(body, "chat", 5)
    tokens = captured.tokens
    assert isinstance(tokens, cap.LazyTokens) and tokens._strings is None
    assert len(tokens) == 50 and tokens._strings is None
    want = [row["token"] for row in json.loads(body)["choices"][0]["logprobs"]["content"]]
    assert tokens[0] == want[0] and tokens._strings == want
    assert tokens == want and want == tokens and list(tokens) == want and tokens[-2:] == want[-2:]
    assert tokens != want[:-1] and tokens != "".join(want)
    assert repr(tokens) == repr(want)


def test_decode_tokens_checks_its_table() -> None:
    """decode_tokens is callable from Python: a table that does not fit the buffer, or
    one whose token does not decode, raises; nothing reads outside the buffer."""
    decode_tokens = scanner().decode_tokens
    body = b'["ab","c\\n"]'

    def table(*refs: tuple[int, int, int]) -> bytes:
        return b"".join(np.array(ref, np.int64).tobytes() for ref in refs)

    assert decode_tokens(body, table((2, 2, 0), (7, 3, 1)), DECODE) == ["ab", "c\n"]
    assert decode_tokens(body, b"", DECODE) == []
    # An empty token reads nothing, wherever the table says it is (a row with no
    # "token" member has one that is not in the body at all).
    assert decode_tokens(body, table((-5, 0, 1), (2**40, 0, 0)), DECODE) == ["", ""]
    for bad in (
        b"x" * 23,  # not a whole 24-byte entry
        table((0, 2, 0)),  # no quote before it
        table((2, 12, 0)),  # no quote after it
        table((2, -1, 0)),
        table((len(body) - 1, 1, 0)),
        table((2, 2**62, 0)),
        table((-(2**62), 2, 0)),
    ):
        with pytest.raises(ValueError):
            decode_tokens(body, bad, DECODE)
    # Tokens that do not decode: invalid UTF-8, or an escaped one whose decode fails.
    failing: list[tuple[bytes, int, Callable[[bytes], object]]] = [
        (b'"\xff"', 0, DECODE),
        (b'"\\n"', 1, lambda b: 1 / 0),
        (b'"\\n"', 1, lambda b: 5),
    ]
    for buf, escaped, decode in failing:
        with pytest.raises(ValueError, match="token 0 does not decode"):
            decode_tokens(buf, table((1, len(buf) - 2, escaped)), decode)


# --- 6. end to end ---------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 5, 8])
def test_capture_response_same_with_and_without_scanner(
    k: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    bodies = [
        responses.chat_body(200, 5, 3),
        body_of(ROWS),
        render_json(envelope(None), random.Random(1)),
    ]
    calls: list[int] = []
    real = cap._native_split

    def counting(body: bytes, kk: int, endpoint: Endpoint) -> Any:
        out = real(body, kk, endpoint)
        calls.append(out is not None)
        return out

    for body in bodies:
        monkeypatch.setattr(cap, "_native_split", counting)
        native = cap.capture_response(body, "chat", k)
        monkeypatch.undo()
        monkeypatch.setattr(cap, "_native", None)
        python = cap.capture_response(body, "chat", k)
        monkeypatch.undo()
        assert_same_captured(native, python)
    assert calls == [True, True, False]


def assert_same_captured(got: Captured, want: Captured, equal_nan: bool = False) -> None:
    """Every field of two captures equal; ``equal_nan``: NaN logprobs (nulls) count as equal."""
    for field in ("endpoint", "model", "text", "finish_reason", "prompt_tokens",
                  "completion_tokens", "n_choices", "has_logprobs", "tokens",
                  "logprobs_spans", "partial"):  # fmt: skip
        assert getattr(got, field) == getattr(want, field), field
    for field in ("chosen", "top", "chosen_rank"):
        a, b = getattr(got, field), getattr(want, field)
        assert a.dtype == b.dtype and a.shape == b.shape, field
        assert np.array_equal(a, b, equal_nan=equal_nan and a.dtype.kind == "f"), field


# --- 7. streams: every chunk's logprobs scanned in one call --------------------------


def stream_capture(
    events: list[bytes], k: int, native: bool, endpoint: Endpoint = "chat"
) -> tuple[StreamCapture, Captured]:
    saved = cap._native
    cap._native = saved if native else None
    try:
        sc = StreamCapture(endpoint, k=k)
        for payload in events:
            sc.feed(payload)
        return sc, sc.result()
    finally:
        cap._native = saved


def assert_same_stream(events: list[bytes], k: int, expect_native: bool | None = None) -> None:
    sc, got = stream_capture(events, k, native=True)
    py_sc, want = stream_capture(events, k, native=False)
    if expect_native is not None:
        assert (sc._scan_pending() is not None) == expect_native
    assert_same_arrays(
        (got.tokens, got.chosen, got.top, got.chosen_rank),
        (want.tokens, want.chosen, want.top, want.chosen_rank),
        k,
    )
    assert got.has_logprobs == want.has_logprobs and got.text == want.text
    if sc._scan_pending() is None:  # the Python path answered both: same skipped chunks
        assert sc.bad_chunks == py_sc.bad_chunks


def chunk(logprobs: bytes | str) -> bytes:
    lp = logprobs.encode() if isinstance(logprobs, str) else logprobs
    return b'{"choices":[{"index":0,"delta":{"content":"x"},"logprobs":%s}]}' % lp


def test_stream_of_random_responses_takes_the_native_path_and_agrees() -> None:
    rng = random.Random(11)
    taken = 0
    for _ in range(150):
        obj = random_response(rng, "chat", rng.choice([1, 3, 5]))
        rows = obj["choices"][0].get("logprobs")
        events = []
        for entry in (rows or {}).get("content") or []:
            events.append(
                orjson.dumps(
                    {
                        "choices": [
                            {
                                "index": 0,
                                "delta": {"content": "x"},
                                "logprobs": {"content": [entry]},
                            }
                        ]
                    }
                )
            )
        events.append(b"[DONE]")
        k = rng.choice([1, 3, 5])
        assert_same_stream(events, k)
        sc, _ = stream_capture(events, k, native=True)
        taken += sc._scan_pending() is not None
    assert taken > 100


def test_stream_of_a_vllm_body_takes_the_native_path() -> None:
    obj = orjson.loads(responses.chat_body(60, 5, 3))
    content = obj["choices"][0]["logprobs"]["content"]
    events = [chunk(orjson.dumps({"content": [e]})) for e in content] + [b"[DONE]"]
    assert_same_stream(events, 5, expect_native=True)


@pytest.mark.parametrize(
    "bad",
    [
        '{"content":7}',  # another shape: the Python path skips this chunk
        '{"content":[{"token":"a","logprob":null}]}',
        b'{"content":[{"token":"a","logprob":-1,"top_logprobs":[{"token":"\xff","logprob":-1}]}]}',
        '{"content":[{"token":"a","logprob":-1,"top_logprobs":[{"token":7,"logprob":-1}]}]}',
    ],
)
def test_stream_with_a_chunk_the_python_path_skips_is_declined(bad: bytes | str) -> None:
    good = '{"content":[{"token":"a","logprob":-1,"top_logprobs":[{"token":"a","logprob":-1}]}]}'
    events = [chunk(good), chunk(bad), chunk(good), b"[DONE]"]
    assert_same_stream(events, 2, expect_native=False)
    sc, got = stream_capture(events, 2, native=True)
    assert sc.bad_chunks == 1 and got.tokens == ["a", "a"]


@pytest.mark.parametrize(
    ("name", "item"),
    [
        ("scan_chat_many", b'{"content":[{"token":"a","logprob":-1}]}'),
        ("scan_completions_many", b'{"tokens":["a"],"token_logprobs":[-1]}'),
    ],
)
def test_scan_many_rejects_what_is_not_a_list_of_bytes(name: str, item: bytes) -> None:
    many = getattr(scanner(), name)
    assert many([item, item], 2, DECODE)[1] == ["a", "a"]
    assert many([item, bytearray(item)], 2, DECODE) is None
    assert many([item + b" x"], 2, DECODE) is None  # trailing bytes after the object
    assert many([item], 0, DECODE) is None
    with pytest.raises(TypeError):
        many((item,), 2, DECODE)
