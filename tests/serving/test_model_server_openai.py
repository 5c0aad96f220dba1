"""The reference model server through the official openai client.

Reported logprobs are checked against a direct forward pass of the same model,
because "raw logprobs" is the property the whole calibration pipeline rests on.
"""

from __future__ import annotations

import math
from typing import Any

import httpx
import pytest

torch = pytest.importorskip("torch")
openai = pytest.importorskip("openai")

QUESTION = "Tell me something about the moon."
PROSE = "The library on the corner has three"
TOL = 1e-4
HI = [{"role": "user", "content": "hi"}]


def _chat(server: Any, **kwargs: Any) -> Any:
    kwargs.setdefault("messages", [{"role": "user", "content": QUESTION}])
    return server.client().chat.completions.create(model=server.model, **kwargs)


def _complete(server: Any, **kwargs: Any) -> Any:
    kwargs.setdefault("prompt", PROSE)
    return server.client().completions.create(model=server.model, **kwargs)


def test_health_and_models(server: Any) -> None:
    assert httpx.get(f"{server.base_url}/healthz").json()["status"] == "ok"
    assert httpx.head(f"{server.base_url}/healthz").status_code == 200
    models = server.client().models.list()
    assert [m.id for m in models.data] == ["tiny"]


def test_greedy_chat_logprobs_are_raw_log_softmax(server: Any, reference: Any) -> None:
    resp = _chat(server, temperature=0, max_tokens=12, logprobs=True, top_logprobs=5)
    choice = resp.choices[0]
    content = choice.logprobs.content
    assert content, "expected at least one generated token"
    ids = reference.chat_ids(QUESTION)
    assert resp.usage.prompt_tokens == len(ids)
    for entry in content:
        expected = reference.logprobs(ids)
        best = int(torch.argmax(expected))
        assert entry.token == reference.text(best)
        assert entry.logprob == pytest.approx(float(expected[best]), abs=TOL)
        values, indices = torch.topk(expected, 5)
        assert [t.token for t in entry.top_logprobs] == [reference.text(i) for i in indices]
        tops = [t.logprob for t in entry.top_logprobs]
        assert tops == sorted(tops, reverse=True)
        assert tops == pytest.approx(values.tolist(), abs=TOL)
        ids.append(best)
    assert choice.message.content == "".join(e.token for e in content)
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_logprobs_stay_raw_when_sampling_hot(server: Any, reference: Any) -> None:
    resp = _chat(server, temperature=2.0, seed=7, max_tokens=10, logprobs=True, top_logprobs=5)
    ids = reference.chat_ids(QUESTION)
    scaled_gaps = []
    for entry in resp.choices[0].logprobs.content:
        token_id = reference.token_id(entry.token)
        raw = reference.logprobs(ids)
        assert entry.logprob == pytest.approx(float(raw[token_id]), abs=TOL)
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(
            torch.topk(raw, 5).values.tolist(), abs=TOL
        )
        scaled = torch.log_softmax(torch.log_softmax(raw, -1) / 2.0, -1)
        scaled_gaps.append(abs(float(scaled[token_id]) - entry.logprob))
        ids.append(token_id)
    # Guard against a vacuous pass: temperature-scaled logprobs really differ here.
    assert max(scaled_gaps) > 0.05


def _chat_stream(server: Any, **kwargs: Any) -> tuple[str, list[Any], str | None, Any]:
    text, entries, finish, usage = "", [], None, None
    stream = _chat(server, stream=True, stream_options={"include_usage": True}, **kwargs)
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            if choice.logprobs is not None:
                entries.extend(choice.logprobs.content)
            finish = choice.finish_reason or finish
    return text, entries, finish, usage


def test_chat_stream_matches_non_stream(server: Any) -> None:
    args = {"temperature": 0, "max_tokens": 20, "logprobs": True, "top_logprobs": 5}
    whole = _chat(server, **args)
    text, entries, finish, usage = _chat_stream(server, **args)
    assert text == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason
    want = whole.choices[0].logprobs.content
    assert [e.token for e in entries] == [e.token for e in want]
    assert [e.logprob for e in entries] == pytest.approx([e.logprob for e in want], abs=1e-6)
    assert usage.completion_tokens == whole.usage.completion_tokens


def test_completions_stream_matches_non_stream_legacy_logprobs(server: Any) -> None:
    whole = _complete(server, temperature=0, max_tokens=12, logprobs=3)
    choice = whole.choices[0]
    lp = choice.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
    assert "".join(lp.tokens) == choice.text
    assert lp.text_offset[0] == 0
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert 3 <= len(top) <= 4
        assert top[token] == pytest.approx(logprob)
        assert list(top.values()) == sorted(top.values(), reverse=True)
        assert logprob == pytest.approx(max(top.values()))  # greedy picks the top token
    text, tokens, logprobs, finish = "", [], [], None
    for chunk in _complete(server, temperature=0, max_tokens=12, logprobs=3, stream=True):
        for c in chunk.choices:
            text += c.text
            if c.logprobs is not None:
                tokens += c.logprobs.tokens
                logprobs += c.logprobs.token_logprobs
            finish = c.finish_reason or finish
    assert (text, tokens, finish) == (choice.text, lp.tokens, choice.finish_reason)
    assert logprobs == pytest.approx(lp.token_logprobs, abs=1e-6)


def test_seed_reproducibility(server: Any) -> None:
    args = {"temperature": 1.0, "max_tokens": 16}
    first = _complete(server, seed=123, **args).choices[0].text
    assert _complete(server, seed=123, **args).choices[0].text == first
    others = {_complete(server, seed=s, **args).choices[0].text for s in range(1, 6)}
    assert len(others | {first}) > 1, "different seeds should sample differently"


def test_stop_string_truncates(server: Any) -> None:
    full = _complete(server, temperature=0, max_tokens=24).choices[0].text
    assert len(full) >= 8, full
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    expected = full[: full.find(stop)]
    resp = _complete(server, temperature=0, max_tokens=24, stop=[stop, "never-seen-xyz"])
    assert resp.choices[0].text == expected
    assert resp.choices[0].finish_reason == "stop"
    streamed = "".join(
        c.text
        for chunk in _complete(server, temperature=0, max_tokens=24, stop=stop, stream=True)
        for c in chunk.choices
    )
    assert streamed == expected


def test_max_tokens_gives_length(server: Any) -> None:
    resp = _complete(server, temperature=0, max_tokens=3)
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage.completion_tokens == 3
    chat = _chat(server, temperature=0, max_completion_tokens=1)
    assert chat.choices[0].finish_reason in ("length", "stop")
    assert chat.usage.completion_tokens == 1


@pytest.mark.parametrize(
    ("route", "body", "param"),
    [
        ("chat/completions", {"messages": HI, "temperature": -1}, "temperature"),
        ("chat/completions", {"messages": []}, "messages"),
        ("chat/completions", {"messages": HI, "n": 2}, "n"),
        (
            "chat/completions",
            {"messages": HI, "logprobs": True, "top_logprobs": 21},
            "top_logprobs",
        ),
        ("chat/completions", {"messages": HI, "top_logprobs": 2}, "top_logprobs"),
        ("completions", {"prompt": "hi", "logprobs": 6}, "logprobs"),
        ("completions", {"prompt": "hi", "top_p": 0}, "top_p"),
        ("completions", {"prompt": ""}, "prompt"),
        ("completions", {"prompt": [999999]}, "prompt"),
        ("completions", {"max_tokens": 4}, "prompt"),
    ],
)
def test_bad_requests_get_openai_errors(server: Any, route: str, body: dict, param: str) -> None:
    resp = httpx.post(f"{server.base_url}/v1/{route}", json={"model": "tiny", **body})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]


def test_errors_through_the_client_and_bad_json(server: Any) -> None:
    with pytest.raises(openai.BadRequestError):
        _chat(server, temperature=-0.5)
    resp = httpx.post(
        f"{server.base_url}/v1/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert resp.status_code == 400
    assert resp.json()["error"]["message"]
    missing = httpx.get(f"{server.base_url}/v1/nothing-here")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found_error"


def test_context_overflow_is_refused(server: Any) -> None:
    long_prompt = " ".join(["bread"] * 600)
    with pytest.raises(openai.BadRequestError) as info:
        _complete(server, prompt=long_prompt, max_tokens=2)
    assert "context" in str(info.value)


def test_top_p_samples_only_inside_the_nucleus(server: Any) -> None:
    resp = _complete(server, temperature=1.0, top_p=0.5, seed=3, max_tokens=12, logprobs=5)
    lp = resp.choices[0].logprobs
    for logprob, top in zip(lp.token_logprobs, lp.top_logprobs, strict=True):
        assert sum(math.exp(v) for v in top.values()) <= 1 + 1e-5
        # Everything ranked above the sampled token must hold less than top_p of the
        # mass, or the sampled token lay outside the nucleus.
        above = sum(math.exp(v) for v in top.values() if v > logprob)
        assert above < 0.5 + 1e-6
