"""The C scanner's completions form (``scan_completions``) against the pure-Python path.

The same contract as the chat scanner's (``test_native_scan.py``): it accepts
only a subset of what ``split_body`` + ``logprob_arrays`` accept, and wherever
it accepts, its tokens, arrays, spans and envelope are exactly theirs. The
legacy form is parallel arrays, so what the Python path pads, cuts or merges
(a null logprob, arrays of unequal length, a token repeated in one
``top_logprobs`` object) is declined.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.proxy import capture as cap
from monitor.proxy import capture_split
from monitor.proxy.captured import Captured
from monitor.proxy.stream_capture import StreamCapture
from tests.proxy import test_native_scan as chat_scan
from tests.proxy.test_native_scan import (
    DECODE,
    F32_LOGPROBS,
    PRETTY,
    RANK_CASES,
    ROWS,
    SENT,
    TOKEN_ALPHABET,
    TRICKY_TOKENS,
    WIDE,
    Row,
    assert_same_captured,
    mutate,
    responses,
    scanner,
)
from tests.support.fake_upstream import random_response, render_json, shuffled


def check(body: bytes, k: int, accept: bool | None = None) -> bool:
    """The chat file's contract check, on the completions path."""
    return chat_scan.check(body, k, accept, "completions")


def python_path(body: bytes, k: int) -> chat_scan.Result | None:
    return chat_scan.python_path(body, k, "completions")


def logprobs_of(rows: list[Row]) -> dict[str, Any]:
    return {
        "tokens": [t for t, _, _ in rows],
        "token_logprobs": [lp for _, lp, _ in rows],
        "top_logprobs": [dict(alts) for _, _, alts in rows],
        "text_offset": list(range(len(rows))),
    }


def envelope(lp: Any, **extra: Any) -> dict[str, Any]:
    choice = {"index": 0, "text": "hi", "logprobs": lp, "finish_reason": "length"}
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "model": "m",
        "choices": [choice],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4},
        **extra,
    }


def body_of(rows: list[Row], dumps: Callable[[Any], bytes] = orjson.dumps) -> bytes:
    return dumps(envelope(logprobs_of(rows)))


def raw_body(logprobs_json: str | bytes) -> bytes:
    """A body around a hand-written logprobs object (duplicates, escapes, odd shapes)."""
    if isinstance(logprobs_json, str):
        logprobs_json = logprobs_json.encode()
    return (
        b'{"id":"x","model":"m","choices":[{"index":0,"text":"t","logprobs":'
        + logprobs_json
        + b',"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":2}}'
    )


# --- realistic bodies take the native path and agree ------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_vllm_bodies(seed: int) -> None:
    body = responses.completions_body(200, 5, seed)
    assert b'"text_offset":[' in body
    for k in (5, 1, 3, 6, 8):
        check(body, k, accept=True)
    for kk in (1, 2, 8):
        check(responses.completions_body(50, kk, seed + 10), kk, accept=True)


def test_fake_upstream_random_responses() -> None:
    rng = random.Random(20240602)
    accepted = expected = 0
    for case in range(300):
        k = rng.choice([1, 2, 3, 5])
        obj = random_response(rng, "completions", k)
        body = orjson.dumps(obj) if case % 2 else render_json(obj, rng)
        first = next((c for c in obj["choices"] if "logprobs" in c), None)
        expect = first is not None and first["index"] == 0 and isinstance(first["logprobs"], dict)
        expected += expect
        accepted += check(body, k, accept=True if expect else None)
    assert expected > 100 and accepted >= expected


@pytest.mark.parametrize("dumps", PRETTY)
def test_whitespace_and_pretty_printing(dumps: Callable[[Any], bytes]) -> None:
    for k in (1, 3, 4):
        check(body_of(ROWS, dumps), k, accept=True)


def test_key_orders_and_unknown_keys() -> None:
    rng = random.Random(5)
    lp = logprobs_of(ROWS)
    lp.update(extra={"tokens": [1], "top_logprobs": "x"}, n=None)
    for _ in range(40):
        obj = shuffled(envelope(lp, system_fingerprint="fp"), rng)
        check(orjson.dumps(obj), rng.choice([1, 3, 4]), accept=True)


@pytest.mark.parametrize(
    "lp",
    [
        {},
        {"tokens": None, "token_logprobs": None, "top_logprobs": None},
        {"tokens": [], "token_logprobs": [], "top_logprobs": []},
        {"tokens": ["a"], "token_logprobs": [-1.0]},  # no top_logprobs key
        {"tokens": ["a"], "token_logprobs": [-1.0], "top_logprobs": None},
        {"tokens": ["a"], "token_logprobs": [-1.0], "top_logprobs": [None]},
        {"tokens": ["a"], "token_logprobs": [-1.0], "top_logprobs": [{}]},
        {"tokens": ["a", "b"], "token_logprobs": [-1, -2], "top_logprobs": [{"a": -1}]},  # short
        {"tokens": ["a", "b"], "token_logprobs": [-1, -2], "top_logprobs": []},
        {"top_logprobs": [], "token_logprobs": [-1, -2], "tokens": ["a", "b"]},
    ],
)
def test_nulls_empties_and_short_top_logprobs(lp: dict[str, Any]) -> None:
    for k in (1, 2, 5):
        check(orjson.dumps(envelope(lp)), k, accept=True)


@pytest.mark.parametrize(
    "lp",
    [
        # what the Python path pads with NaN, or cuts, or merges: the scanner declines
        '{"tokens":["a"],"token_logprobs":[null],"top_logprobs":[{"a":-1}]}',
        '{"tokens":["a","b"],"token_logprobs":[-1],"top_logprobs":[{"a":-1}]}',
        '{"tokens":["a"],"token_logprobs":[-1,-2],"top_logprobs":[{"a":-1}]}',
        '{"tokens":["a"],"top_logprobs":[{"a":-1}]}',
        '{"tokens":["a"],"token_logprobs":null,"top_logprobs":[{"a":-1}]}',
        '{"tokens":["a"],"token_logprobs":[-1],"top_logprobs":[{"a":-1},{"b":-2}]}',
        '{"token_logprobs":[-1],"top_logprobs":[{"a":-1}]}',
        '{"tokens":["a"],"token_logprobs":[-1],"top_logprobs":[{"a":-1,"a":-2}]}',
        '{"tokens":["a"],"token_logprobs":[-1],"top_logprobs":[{"a":-1,"b":-3,"\\u0061":-2}]}',
        '{"tokens":["é"],"token_logprobs":[-1],"top_logprobs":[{"é":-1,"\\u00e9":-2}]}',
        '{"tokens":["a"],"tokens":["a"],"token_logprobs":[-1]}',
        '{"tokens":["a"],"token_logprobs":[-1],"token_logprobs":[-1]}',
        '{"tokens":["a"],"token_logprobs":[-1],"top_logprobs":null,"top_logprobs":null}',
        '{"tok\\u0065ns":["a"],"token_logprobs":[-1]}',
        '{"tokens":["a"],"token_logprobs":[-1],"top_logprobs":[{"a":null}]}',
        '{"tokens":["a"],"token_logprobs":[-1],"top_logprobs":[{"a":"x"}]}',
        '{"tokens":["a"],"token_logprobs":[-1],"top_logprobs":[["a",-1]]}',
        '{"tokens":[7],"token_logprobs":[-1]}',
        '{"tokens":["a"],"token_logprobs":[true]}',
        '{"tokens":"a","token_logprobs":[-1]}',
        '{"tokens":["a"],"token_logprobs":[-1],"top_logprobs":[{"a":-1}],}',
        '{"tokens":["a"],"token_logprobs":[-1],"top_logprobs":[{"a":-1,}]}',
        '{"tokens":["a",],"token_logprobs":[-1]}',
        '{"tokens":["a"],"token_logprobs":[-1e999]}',
        b'{"tokens":["a"],"token_logprobs":[-1],"top_logprobs":[{"\xff":-1}]}',
        b'{"tokens":["\xc3"],"token_logprobs":[-1]}',
    ],
)
def test_what_the_python_path_reads_otherwise_is_declined(lp: str | bytes) -> None:
    for k in (1, 2):
        check(raw_body(lp), k, accept=False)


def test_a_repeated_token_is_found_however_it_is_spelled() -> None:
    """The same key spelled two ways merges in the Python path's dict: declined."""
    for a, b in [("a", "\\u0061"), ("\\n", "\\u000a"), ("🙂", "\\ud83d\\ude42"), ("/", "\\/")]:
        lp = f'{{"tokens":["x"],"token_logprobs":[-1],"top_logprobs":[{{"{a}":-1,"{b}":-2}}]}}'
        check(raw_body(lp), 2, accept=False)
    # Different strings whose spellings share a length, and escapes that differ: read.
    for a, b in [("ab", "ba"), ("\\n", "\\t"), ("\\u00e9", "\\u00e8")]:
        lp = f'{{"tokens":["x"],"token_logprobs":[-1],"top_logprobs":[{{"{a}":-1,"{b}":-2}}]}}'
        check(raw_body(lp), 2, accept=True)


@pytest.mark.parametrize("ensure_ascii", [True, False])
def test_escaped_and_non_ascii_tokens(ensure_ascii: bool) -> None:
    rows: list[Row] = []
    for i, tok in enumerate(TRICKY_TOKENS):
        other = TRICKY_TOKENS[(i + 1) % len(TRICKY_TOKENS)]
        rows.append((tok, -1.0, [(other, -0.5), (tok, -1.0), ("z", -2.0)]))  # settled
        rows.append((tok, -1.0, [(other, -1.0), (tok, -1.0), ("z", -1.0)]))  # strings
        rows.append((tok, -3.0, [(other, -1.0), (tok + "x", -3.0)]))  # tie at the lowest
    rows = [(t, lp, alts) for t, lp, alts in rows if len(dict(alts)) == len(alts)]
    for k in (1, 2, 3):
        check(body_of(rows, lambda o: json.dumps(o, ensure_ascii=ensure_ascii).encode()), k, True)
    check(body_of(rows), 3, accept=True)


@pytest.mark.parametrize(
    "rows", [c for c in RANK_CASES if all(len(dict(r[2])) == len(r[2]) for r in c)]
)
def test_rank_cases(rows: list[Row]) -> None:
    for k in (1, 2, 3, 4):
        check(body_of(rows), k, accept=True)


# --- property test -------------------------------------------------------------------


@st.composite
def completions_case(draw: st.DrawFn) -> tuple[bytes, int, bool | None]:
    """A body, K, and whether the scanner must take it (None: either way)."""
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    floats = draw(st.lists(WIDE, min_size=1, max_size=4)) + draw(
        st.lists(F32_LOGPROBS, min_size=1, max_size=8)
    )
    k = draw(st.integers(1, 8))
    n = draw(st.integers(0, 30))
    tokens = [rng.choice(TOKEN_ALPHABET) for _ in range(n)]

    def logprob(chosen: float) -> float:
        r = rng.random()
        return chosen if r < 0.3 else SENT if r < 0.4 else rng.choice(floats)

    lps: list[Any] = [logprob(-1.0) for _ in range(n)]
    tops: list[Any] = []
    for tok, lp in zip(tokens, lps, strict=True):
        shape = rng.random()
        if shape < 0.05:
            tops.append(None)
            continue
        alts = {
            rng.choice([*TOKEN_ALPHABET, tok]): logprob(lp) for _ in range(rng.randint(0, k + 2))
        }
        tops.append(alts)
    fault = draw(st.integers(0, 9))  # 0 to 2: something the scanner must decline
    if fault == 0 and n:
        lps[rng.randrange(n)] = None
    elif fault == 1:
        lps.append(-1.0) if rng.random() < 0.5 else tokens.append("a")
    elif fault == 2:
        tops.append({"a": -1.0})
    elif fault == 3 and tops:
        del tops[rng.randrange(len(tops)) :]  # short: padded by both paths
    faulty = fault in (1, 2) or (fault == 0 and n > 0)
    lp = {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops}
    if draw(st.booleans()):
        lp["text_offset"] = list(range(n))
    items = list(lp.items())
    rng.shuffle(items)
    obj = envelope(dict(items))
    renderer = draw(st.sampled_from(["orjson", "orjson", "dumps", "dumps_ascii"]))
    if renderer == "orjson":
        body = orjson.dumps(obj)
    else:
        body = json.dumps(obj, ensure_ascii=renderer == "dumps_ascii").encode()
    expect = False if faulty else True if renderer == "orjson" else None
    return body, k, expect


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(completions_case())
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_property_native_is_python_where_it_accepts(case: tuple[bytes, int, bool | None]) -> None:
    body, k, expect = case
    check(body, k, accept=expect)


def test_random_mutations() -> None:
    bases = [
        body_of([*ROWS, ("\\u", -1e-5, [("x", -1e-5)])]),
        body_of(ROWS, lambda o: json.dumps(o, indent=1).encode()),
        body_of(ROWS, lambda o: json.dumps(o).encode()),
        responses.completions_body(4, 3, 1),
    ]
    rng = random.Random(4242)
    accepted = 0
    for base in bases:
        assert check(base, 3, accept=True)
        start = capture_split._logprobs_start(base)
        for _ in range(1500):
            body = mutate(base, rng, start, len(base) - 60)
            accepted += check(body, rng.choice([1, 3, 5]))
    assert accepted > 300  # mutants that stay valid JSON of this shape: both paths ran


def test_truncated_bodies_are_declined() -> None:
    body = body_of(ROWS[:4])
    start = capture_split._logprobs_start(body)
    got = scanner().scan_completions(body, start, 3, DECODE)
    assert got is not None
    for cut in range(len(body)):
        assert cap._native_split(body[:cut], 3, "completions") is None, cut
        if start < cut < got[0]:
            assert scanner().scan_completions(body[:cut], start, 3, DECODE) is None, cut


# --- end to end: capture_response and streams ----------------------------------------


@pytest.mark.parametrize("k", [1, 5, 8])
def test_capture_response_same_with_and_without_scanner(
    k: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    for body, native_expected in [
        (responses.completions_body(200, 5, 3), True),
        (body_of(ROWS), True),
        (render_json(envelope(None), random.Random(1)), False),
    ]:
        native = cap.capture_response(body, "completions", k)
        assert (cap._native_split(body, k, "completions") is not None) == native_expected
        monkeypatch.setattr(cap, "_native", None)
        python = cap.capture_response(body, "completions", k)
        monkeypatch.undo()
        assert_same_captured(native, python)


def stream_capture(events: list[bytes], k: int, native: bool) -> tuple[StreamCapture, Captured]:
    return chat_scan.stream_capture(events, k, native, "completions")


def chunk(logprobs: bytes | str) -> bytes:
    lp = logprobs.encode() if isinstance(logprobs, str) else logprobs
    return b'{"choices":[{"index":0,"text":"x","logprobs":%s}]}' % lp


def assert_same_stream(events: list[bytes], k: int, expect_native: bool) -> None:
    sc, got = stream_capture(events, k, native=True)
    py_sc, want = stream_capture(events, k, native=False)
    assert (sc._scan_pending() is not None) == expect_native
    assert_same_captured(got, want, equal_nan=True)  # a null logprob is NaN on both
    assert sc.bad_chunks == py_sc.bad_chunks


def test_stream_of_a_vllm_body_takes_the_native_path() -> None:
    events = [e.removeprefix(b"data: ").strip() for e in responses.completions_stream(60, 5, 3)]
    assert events[-1] == b"[DONE]"
    for k in (5, 2, 7):
        assert_same_stream(events, k, expect_native=True)


@pytest.mark.parametrize(
    "bad",
    [
        '{"tokens":7}',  # another shape: the Python path skips this chunk
        '{"tokens":["a"],"token_logprobs":[null]}',
        '{"tokens":["a"],"token_logprobs":[-1,-2]}',
        '{"tokens":["a"],"token_logprobs":[-1],"top_logprobs":[{"a":-1,"a":-2}]}',
        b'{"tokens":["a"],"token_logprobs":[-1],"top_logprobs":[{"\xff":-1}]}',
    ],
)
def test_stream_with_a_chunk_the_scanner_is_unsure_of_is_declined(bad: bytes | str) -> None:
    good = '{"tokens":["a"],"token_logprobs":[-1],"top_logprobs":[{"a":-1,"b":-2}]}'
    events = [chunk(good), chunk(bad), chunk(good), b"[DONE]"]
    assert_same_stream(events, 2, expect_native=False)


@pytest.mark.parametrize("native", [True, False])
def test_unequal_arrays_are_fitted_to_the_tokens(
    native: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tokens are the positions: a malformed answer is captured, not a crash."""
    if not native:
        monkeypatch.setattr(cap, "_native", None)
    body = raw_body(
        '{"tokens":["a","b"],"token_logprobs":[-1],'
        '"top_logprobs":[{"a":-1,"b":-2},{"b":-0.5},{"c":-3}]}'
    )
    got = cap.capture_response(body, "completions", 2)
    assert got.tokens == ["a", "b"]
    np.testing.assert_array_equal(got.chosen, np.array([-1.0, np.nan], np.float32))
    np.testing.assert_array_equal(got.top, np.array([[-1, -2], [-0.5, -np.inf]], np.float32))
    assert got.chosen_rank.tolist() == [0, 0]
    events = [chunk('{"tokens":["a"],"token_logprobs":[-1,-2],"top_logprobs":[{"a":-1},{"z":0}]}')]
    _, streamed = stream_capture([*events, *events, b"[DONE]"], 2, native=native)
    assert streamed.tokens == ["a", "a"] and streamed.chosen.tolist() == [-1.0, -1.0]


UTF8_EDGES = [  # (raw bytes of a token, valid UTF-8 to Python)
    (b"\xc2\x80", True),
    (b"\xdf\xbf", True),
    (b"\xe0\xa0\x80", True),
    (b"\xed\x9f\xbf", True),
    (b"\xee\x80\x80", True),
    (b"\xef\xbf\xbf", True),
    (b"\xf0\x90\x80\x80", True),
    (b"\xf4\x8f\xbf\xbf", True),
    (b"\xc0\x80", False),  # overlong
    (b"\xc1\xbf", False),
    (b"\xe0\x80\x80", False),
    (b"\xe0\x9f\xbf", False),
    (b"\xed\xa0\x80", False),  # a surrogate, encoded
    (b"\xf0\x8f\xbf\xbf", False),
    (b"\xf4\x90\x80\x80", False),  # above U+10FFFF
    (b"\xf5\x80\x80\x80", False),
    (b"\xff", False),
    (b"\x80", False),  # a continuation byte alone
    (b"\xc3", False),  # cut short
    (b"\xe2\x82", False),
    (b"\xc3\\n", False),  # cut short by an escape
    (b"\xe2\x82\xac\\u00e9\xc3\xa9", True),
]


@pytest.mark.parametrize(("raw", "valid"), UTF8_EDGES)
def test_alternatives_are_held_to_pythons_utf8(raw: bytes, valid: bool) -> None:
    for tokens in ([b"a", raw], [raw, b"a"]):
        tops = b",".join(b'"%s":-%d' % (t, i + 1) for i, t in enumerate(tokens))
        lp = b'{"tokens":["a"],"token_logprobs":[-1],"top_logprobs":[{%s}]}' % tops
        assert (python_path(raw_body(lp), 2) is not None) == valid
        check(raw_body(lp), 2, accept=valid)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ('\\"', "\\u0022"),
        ("\\\\", "\\u005C"),
        ("\\b", "\\u0008"),
        ("\\f", "\\u000c"),
        ("\\r", "\\u000D"),
        ("\\t", "\\u0009"),
        ("x\\u00e9y", "xéy"),
        ("\\u6771\\u4eac", "東京"),
        ("\\uD83D\\uDE42!", "🙂!"),
        ("\\u0000", "\\u0000"),
    ],
)
def test_escaped_spellings_compare_by_their_string(a: str, b: str) -> None:
    """One string spelled two ways: a duplicate key (declined), and the chat rank's match."""
    lp = f'{{"tokens":["x"],"token_logprobs":[-1],"top_logprobs":[{{"{a}":-1,"{b}":-2}}]}}'
    check(raw_body(lp), 2, accept=False)
    lp = f'{{"tokens":["{a}"],"token_logprobs":[-1],"top_logprobs":[{{"{b}":-1,"z":-1}}]}}'
    assert check(raw_body(lp), 2, accept=True)
    got = cap._native_split(raw_body(lp), 2, "completions")
    assert got is not None and got[2][3].tolist() == [0]  # tie broken by the string
