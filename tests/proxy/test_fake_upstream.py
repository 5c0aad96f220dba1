"""The fake upstream speaks OpenAI well enough for the official client, and its modes work."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from monitor.proxy.capture import capture_response
from monitor.proxy.sse import SSEParser
from monitor.proxy.stream_capture import StreamCapture
from tests.support.fake_upstream import FakeUpstream

MSG = [{"role": "user", "content": "2+2?"}]


@pytest.fixture(scope="module")
def up() -> Iterator[FakeUpstream]:
    with FakeUpstream(model="fake-1") as server:
        yield server


@pytest.fixture
def client(up: FakeUpstream) -> openai.OpenAI:
    up.mode = {}
    return openai.OpenAI(base_url=up.base_url, api_key="x", max_retries=0, timeout=10)


def test_models_and_request_log(up: FakeUpstream, client: openai.OpenAI) -> None:
    assert up.base_url.endswith("/v1")
    assert [m.id for m in client.models.list()] == ["fake-1"]
    client.chat.completions.create(model="m", messages=MSG, extra_headers={"X-Test": "1"})
    last = up.requests[-1]
    assert last.path == "/v1/chat/completions" and last.json["messages"] == MSG
    assert last.headers["x-test"] == "1"


def test_chat_logprobs_deterministic_with_samples_outside_top_k(client: openai.OpenAI) -> None:
    kw = {"model": "m", "messages": MSG, "logprobs": True, "top_logprobs": 3}
    a = client.chat.completions.create(**kw)  # type: ignore[call-overload]
    b = client.chat.completions.create(**kw)  # type: ignore[call-overload]
    assert a.choices[0].message.content == b.choices[0].message.content
    content = a.choices[0].logprobs.content
    assert "".join(t.token for t in content) == a.choices[0].message.content
    assert all(len(t.top_logprobs) in (3, 4) for t in content)
    assert a.usage is not None and a.usage.completion_tokens == len(content)
    # Across prompts some sampled tokens fall outside the top-K (appended as a 4th).
    outside = 0
    for i in range(10):
        r = client.chat.completions.create(
            **{**kw, "messages": [{"role": "user", "content": str(i)}]}
        )  # type: ignore[call-overload]
        outside += sum(len(t.top_logprobs) == 4 for t in r.choices[0].logprobs.content)
    assert outside > 0


def test_no_logprobs_unless_asked_and_max_tokens(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="m", messages=MSG, max_tokens=3)
    assert r.choices[0].logprobs is None
    assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"
    r = client.chat.completions.create(
        model="m",
        messages=MSG,
        logprobs=True,
        top_logprobs=2,
        extra_headers={"X-Fake-Mode": "no_logprobs"},
    )
    assert r.choices[0].logprobs is None


def test_completions_and_capture(up: FakeUpstream, client: openai.OpenAI) -> None:
    r = client.completions.create(model="m", prompt="hi", logprobs=2, max_tokens=5)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == 5 and all(2 <= len(d) <= 3 for d in lp.top_logprobs)
    raw = httpx.post(
        up.base_url + "/completions", json={"prompt": "hi", "logprobs": 2, "max_tokens": 5}
    )
    got = capture_response(raw.content, "completions", 2)
    assert got.tokens == lp.tokens and got.top.shape == (5, 2) and got.text == r.choices[0].text


def test_streaming_chat_and_capture(up: FakeUpstream, client: openai.OpenAI) -> None:
    full = client.chat.completions.create(model="m", messages=MSG)
    stream = client.chat.completions.create(
        model="m", messages=MSG, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    body = {"messages": MSG, "stream": True, "logprobs": True, "top_logprobs": 5}
    with httpx.stream("POST", up.base_url + "/chat/completions", json=body) as resp:
        parser, sc = SSEParser(), StreamCapture("chat", k=5)
        for piece in resp.iter_raw():
            for ev in parser.feed(piece):
                if ev.data is not None:
                    sc.feed(ev.data)
    got = sc.result()
    assert not got.partial and got.text == text and got.top.shape == (len(got.tokens), 5)


def test_error_mode(up: FakeUpstream, client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as exc:
        client.chat.completions.create(
            model="m", messages=MSG, extra_headers={"X-Fake-Mode": "error=503"}
        )
    assert exc.value.status_code == 503
    up.mode = {"error": "429"}
    with pytest.raises(openai.RateLimitError):
        client.completions.create(model="m", prompt="x")


def test_stall_and_delay_modes(client: openai.OpenAI) -> None:
    slow = client.with_options(timeout=0.3)
    with pytest.raises(openai.APITimeoutError):
        slow.chat.completions.create(
            model="m", messages=MSG, extra_headers={"X-Fake-Mode": "stall=2"}
        )
    t0 = time.perf_counter()
    client.chat.completions.create(
        model="m", messages=MSG, extra_headers={"X-Fake-Mode": "delay_ms=150-200"}
    )
    assert time.perf_counter() - t0 >= 0.15


def test_cut_stream_breaks_the_client(up: FakeUpstream, client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="m", messages=MSG, stream=True, extra_headers={"X-Fake-Mode": "cut"}
    )
    got: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        for c in stream:
            got.append(c.choices[0].delta.content or "")
    full = client.chat.completions.create(model="m", messages=MSG).choices[0].message.content
    assert full is not None and 0 < len("".join(got)) < len(full)


def test_pretty_mode_still_parses(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="m",
        messages=MSG,
        logprobs=True,
        top_logprobs=1,
        extra_headers={"X-Fake-Mode": "pretty"},
    )
    assert r.choices[0].logprobs is not None and r.model == "fake-1"
