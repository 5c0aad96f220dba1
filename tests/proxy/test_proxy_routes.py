"""The proxy end to end: the official openai client -> sidecar -> a real upstream on loopback."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from monitor.app import create_app
from monitor.settings import Settings
from tests.support.fake_upstream import FakeUpstream
from tests.support.servers import serve_app

CHAT = [{"role": "user", "content": "What is 2 + 2?"}]


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture
def sidecar(make_settings: Callable[..., Settings], upstream: FakeUpstream) -> Iterator[str]:
    settings = make_settings(
        upstream_url=upstream.base_url, proxy={"read_timeout_s": 2.0, "connect_timeout_s": 1.0}
    )
    with serve_app(create_app(settings, "api")) as url:
        yield url


def client(base: str, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key="sk-test", max_retries=0, **kwargs)


def _without_thermostat(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in ("thermostat", "id", "created")}


@pytest.mark.parametrize("client_logprobs", [None, 2, 5])
def test_chat_matches_direct_with_exactly_the_logprobs_asked(
    sidecar: str, upstream: FakeUpstream, client_logprobs: int | None
) -> None:
    kwargs: dict[str, Any] = {"model": "fake-model", "messages": CHAT, "max_tokens": 12, "seed": 3}
    if client_logprobs is not None:
        kwargs.update(logprobs=True, top_logprobs=client_logprobs)
    via = client(sidecar).chat.completions.with_raw_response.create(
        **kwargs, extra_headers={"X-Thermostat-Task": "qa"}
    )
    direct = client(upstream.base_url[: -len("/v1")]).chat.completions.create(**kwargs)
    forwarded = upstream.requests[0].json
    assert forwarded["logprobs"] is True and forwarded["top_logprobs"] == max(
        5, client_logprobs or 0
    )
    proxied = via.parse()
    assert proxied.choices[0].message.content == direct.choices[0].message.content
    body = json.loads(via.content)
    thermostat = body["thermostat"]
    assert thermostat["task"] == "qa" and 0 < thermostat["confidence"] <= 1
    assert thermostat["raw_confidence"] == thermostat["confidence"]  # no calibration yet
    assert via.headers["x-thermostat-generation-id"] == thermostat["generation_id"]
    assert float(via.headers["x-thermostat-overhead-ms"]) >= 0
    logprobs = body["choices"][0]["logprobs"]
    if client_logprobs is None:
        assert logprobs is None
    else:
        tokens = logprobs["content"]
        direct_tokens = direct.choices[0].logprobs.content
        assert [t["token"] for t in tokens] == [t.token for t in direct_tokens]
        if client_logprobs < 5:  # trimmed to the client's k, best first
            assert all(len(t["top_logprobs"]) == client_logprobs for t in tokens)
            for ours, theirs in zip(tokens, direct_tokens, strict=True):
                best = sorted((a.logprob for a in theirs.top_logprobs), reverse=True)
                assert [a["logprob"] for a in ours["top_logprobs"]] == best[:client_logprobs]
        else:  # the same k as the upstream's: passed through untouched (vLLM may add K+1)
            assert [len(t["top_logprobs"]) for t in tokens] == [
                len(t.top_logprobs) for t in direct_tokens
            ]


@pytest.mark.parametrize("client_logprobs", [None, 3])
def test_completions_round_trip(
    sidecar: str, upstream: FakeUpstream, client_logprobs: int | None
) -> None:
    kwargs: dict[str, Any] = {"model": "fake-model", "prompt": "2 + 2 =", "max_tokens": 8}
    if client_logprobs is not None:
        kwargs["logprobs"] = client_logprobs
    raw = client(sidecar).completions.with_raw_response.create(
        **kwargs, extra_body={"metadata": {"task": "arith"}}
    )
    forwarded = upstream.requests[0].json
    assert forwarded["logprobs"] == 5 and "metadata" not in forwarded
    body = json.loads(raw.content)
    assert body["thermostat"]["task"] == "arith"
    lp = body["choices"][0]["logprobs"]
    if client_logprobs is None:
        assert lp is None
    else:
        assert all(len(alts) <= client_logprobs for alts in lp["top_logprobs"])


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_streaming_passes_chunks_and_ends_with_thermostat_chunk(
    sidecar: str, upstream: FakeUpstream, endpoint: str
) -> None:
    c = client(sidecar)
    if endpoint == "chat":
        stream = c.chat.completions.create(model="m", messages=CHAT, max_tokens=10, stream=True)
        direct = client(upstream.base_url[:-3]).chat.completions.create(
            model="m", messages=CHAT, max_tokens=10
        )
        expected = direct.choices[0].message.content
    else:
        stream = c.completions.create(model="m", prompt="hi", max_tokens=10, stream=True)
        expected = (
            client(upstream.base_url[:-3])
            .completions.create(model="m", prompt="hi", max_tokens=10)
            .choices[0]
            .text
        )
    chunks = list(stream)
    text = "".join(
        (ch.choices[0].delta.content or "") if endpoint == "chat" else ch.choices[0].text
        for ch in chunks
        if ch.choices
    )
    assert text == expected
    last = chunks[-1]
    assert last.choices == []
    extra = last.model_extra or {}
    assert extra["thermostat"]["task"] == "default" and extra["thermostat"]["confidence"] > 0
    assert all(getattr(ch.choices[0], "logprobs", None) is None for ch in chunks if ch.choices)


def test_models_passes_through(sidecar: str) -> None:
    models = client(sidecar).models.list()
    assert [m.id for m in models.data] == ["fake-model"]


def test_upstream_refusing_connections_gives_502(make_settings: Callable[..., Settings]) -> None:
    from tests.support.servers import free_port

    settings = make_settings(upstream_url=f"http://127.0.0.1:{free_port()}/v1")
    with serve_app(create_app(settings, "api")) as url:
        response = httpx.post(f"{url}/v1/chat/completions", json={"model": "m", "messages": CHAT})
        assert response.status_code == 502
        assert response.json()["error"]["code"] == "upstream_unavailable"
        assert httpx.get(f"{url}/healthz").status_code == 200


def test_upstream_stalling_gives_504_and_proxy_stays_healthy(sidecar: str) -> None:
    response = httpx.post(
        f"{sidecar}/v1/chat/completions",
        json={"model": "m", "messages": CHAT},
        headers={"X-Fake-Mode": "stall=5"},
        timeout=10,
    )
    assert response.status_code == 504
    assert set(response.json()["error"]) >= {"message", "type", "code"}
    ok = httpx.post(f"{sidecar}/v1/chat/completions", json={"model": "m", "messages": CHAT})
    assert ok.status_code == 200


def test_upstream_error_status_and_body_pass_through(sidecar: str) -> None:
    response = httpx.post(
        f"{sidecar}/v1/chat/completions",
        json={"model": "m", "messages": CHAT},
        headers={"X-Fake-Mode": "error=429"},
    )
    assert response.status_code == 429 and "error" in response.json()


def test_requests_are_counted_in_metrics_by_task_endpoint_and_status(sidecar: str) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    def post(task: str, mode: str | None = None) -> int:
        headers = {"X-Thermostat-Task": task} | ({"X-Fake-Mode": mode} if mode else {})
        body = {"model": "m", "messages": CHAT}
        return httpx.post(f"{sidecar}/v1/chat/completions", json=body, headers=headers).status_code

    assert [post("qa"), post("qa"), post("summaries"), post("qa", "error=429")] == [200] * 3 + [429]
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(httpx.get(f"{sidecar}/metrics").text)
        for s in family.samples
    }

    def requests(task: str, status: str) -> float:
        labels = (("endpoint", "chat"), ("status", status), ("task", task))
        return samples.get(("thermostat_proxy_requests_total", labels), 0.0)

    assert (requests("qa", "200"), requests("summaries", "200"), requests("qa", "429")) == (2, 1, 1)
    chat = (("endpoint", "chat"),)
    assert samples[("thermostat_upstream_latency_seconds_count", chat)] == 3
    assert samples[("thermostat_proxy_overhead_seconds_count", chat)] == 3


@pytest.mark.parametrize(
    ("content", "headers", "status", "needle"),
    [
        (b"{not json", {}, 400, "not valid JSON"),
        (b"[1, 2]", {}, 400, "JSON object"),
        (b'{"messages": []}', {"X-Thermostat-Task": "Bad Task!"}, 422, "not a valid task name"),
        (b'{"messages": [], "logprobs": "yes"}', {}, 400, "logprobs must be a boolean"),
    ],
)
def test_bad_requests_get_a_4xx_naming_the_problem(
    sidecar: str, content: bytes, headers: dict[str, str], status: int, needle: str
) -> None:
    response = httpx.post(
        f"{sidecar}/v1/chat/completions",
        content=content,
        headers={"content-type": "application/json", **headers},
    )
    assert response.status_code == status
    assert needle in response.json()["error"]["message"]


def test_oversized_request_is_413(
    make_settings: Callable[..., Settings], upstream: FakeUpstream
) -> None:
    settings = make_settings(upstream_url=upstream.base_url, proxy={"max_body_bytes": 2048})
    with serve_app(create_app(settings, "api")) as url:
        big = {"model": "m", "messages": [{"role": "user", "content": "x" * 5000}]}
        assert httpx.post(f"{url}/v1/chat/completions", json=big).status_code == 413


def test_policy_sampling_is_enforced_and_never_leaks(
    make_settings: Callable[..., Settings], upstream: FakeUpstream, tmp_path: Any
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "tasks:\n  strict:\n    sampling: policy\n"
        "    policy: {temperature: 0.55, top_p: 0.95, max_tokens: 7}\n"
    )
    settings = make_settings(upstream_url=upstream.base_url, config=config)
    with serve_app(create_app(settings, "api")) as url:
        c = client(url)
        c.chat.completions.create(
            model="m",
            messages=CHAT,
            temperature=1.3,
            max_tokens=50,
            extra_headers={"X-Thermostat-Task": "strict"},
        )
        c.chat.completions.create(model="m", messages=CHAT, temperature=0.9, max_tokens=11)
    strict, free = upstream.requests[0].json, upstream.requests[1].json
    assert (strict["temperature"], strict["top_p"], strict["max_tokens"]) == (0.55, 0.95, 7)
    assert free["temperature"] == 0.9 and free["max_tokens"] == 11 and "top_p" not in free


def test_authorization_passes_through_and_the_resolved_task_goes_upstream(
    sidecar: str, upstream: FakeUpstream
) -> None:
    client(sidecar).chat.completions.create(
        model="m",
        messages=CHAT,
        extra_body={"metadata": {"task": "from-body"}},
        extra_headers={"Connection": "keep-alive"},
    )
    headers = upstream.requests[0].headers
    assert headers["authorization"] == "Bearer sk-test"
    # The task named in metadata.task reaches the upstream as a header, once.
    assert headers["x-thermostat-task"] == "from-body"
    assert "metadata" not in upstream.requests[0].json


def test_headers_named_in_connection_are_not_forwarded_either_way(
    sidecar: str, upstream: FakeUpstream
) -> None:
    """RFC 9110 7.6.1: what `Connection` lists is for one hop only, either way."""
    body = {"model": "m", "messages": CHAT, "max_tokens": 4}
    headers = {
        "Authorization": "Bearer sk-test",
        "Connection": "keep-alive, X-Client-Hop",
        "X-Client-Hop": "secret",
        "X-Client-Kept": "1",
    }
    for stream in (False, True):
        response = httpx.post(
            f"{sidecar}/v1/chat/completions",
            json={**body, "stream": stream},
            headers={**headers, "X-Fake-Mode": "hop_header"},
            timeout=10,
        )
        assert response.status_code == 200
        assert "x-upstream-hop" not in response.headers
        assert response.headers["x-upstream-kept"] == "1"
        received = upstream.requests[-1].headers
        assert "x-client-hop" not in received
        assert received["x-client-kept"] == "1"
        assert received["authorization"] == "Bearer sk-test"


@pytest.mark.parametrize("stream", [False, True])
def test_stored_positions_equal_the_generated_tokens(
    sidecar: str, upstream: FakeUpstream, stream: bool
) -> None:
    body = {
        "model": "m",
        "messages": CHAT,
        "max_tokens": 9,
        "logprobs": True,
        "top_logprobs": 5,
        "stream": stream,
    }
    response = httpx.post(f"{sidecar}/v1/chat/completions", json=body, timeout=10)
    generation_id = response.headers["x-thermostat-generation-id"]
    if stream:
        events = [
            json.loads(line[6:])
            for line in response.text.splitlines()
            if line.startswith("data: {")
        ]
        tokens = [
            t
            for e in events
            for c in e["choices"]
            for t in ((c.get("logprobs") or {}).get("content") or [])
        ]
    else:
        tokens = response.json()["choices"][0]["logprobs"]["content"]
    record = _stored(sidecar, generation_id)
    positions = record["logprobs"]
    assert record["token_count"] == len(tokens) == len(positions) == 9
    for position, token in zip(positions, tokens, strict=True):
        assert position["chosen_logprob"] == pytest.approx(token["logprob"], abs=1e-5)
        best = max(alt["logprob"] for alt in token["top_logprobs"])
        assert max(position["top_logprobs"]) == pytest.approx(best, abs=2e-3)  # float16


def _stored(sidecar: str, generation_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    stored = httpx.get(f"{sidecar}/api/generations/{generation_id}")
    while stored.status_code == 404 and time.monotonic() < deadline:
        time.sleep(0.1)
        stored = httpx.get(f"{sidecar}/api/generations/{generation_id}")
    assert stored.status_code == 200
    return dict(stored.json())


def test_an_answer_without_logprobs_still_carries_every_thermostat_header(sidecar: str) -> None:
    """An upstream that ignores the logprobs request: confidence null, its header empty."""
    response = httpx.post(
        f"{sidecar}/v1/chat/completions",
        json={"model": "m", "messages": CHAT, "max_tokens": 4},
        headers={"X-Fake-Mode": "no_logprobs"},
        timeout=10,
    )
    assert response.status_code == 200
    thermostat = response.json()["thermostat"]
    assert thermostat["confidence"] is None and thermostat["calibration_version"] is None
    assert response.headers["x-thermostat-generation-id"] == thermostat["generation_id"]
    assert response.headers["x-thermostat-confidence"] == ""
    assert response.headers["x-thermostat-calibration-version"] == ""
    assert float(response.headers["x-thermostat-overhead-ms"]) >= 0


@pytest.mark.parametrize("end", ["newline", "midline"])
def test_a_stream_ending_without_its_blank_line(
    sidecar: str, upstream: FakeUpstream, end: str
) -> None:
    """The upstream's last event ends after one line end (or mid-line) and no [DONE].

    A complete last event is relayed, dispatchable, and recorded; a cut one is
    dropped. Either way the thermostat chunk and [DONE] arrive as their own events.
    """
    body = {"model": "m", "messages": CHAT, "max_tokens": 6, "logprobs": True, "top_logprobs": 5}
    direct = httpx.post(f"{upstream.base_url}/chat/completions", json=body, timeout=10).json()
    tokens = [t["token"] for t in direct["choices"][0]["logprobs"]["content"]]
    response = httpx.post(
        f"{sidecar}/v1/chat/completions",
        json={**body, "stream": True},
        headers={"X-Fake-Mode": f"end={end}"},
        timeout=10,
    )
    assert response.text.endswith("\n\ndata: [DONE]\n\n")
    events = [block for block in response.text.split("\n\n") if block]
    assert all(event.startswith("data: ") and "\n" not in event for event in events)
    payloads = [json.loads(event[6:]) for event in events[:-1]]
    text = "".join(p["choices"][0]["delta"].get("content") or "" for p in payloads if p["choices"])
    kept = tokens if end == "newline" else tokens[:-1]
    assert text == "".join(kept)
    assert payloads[-1]["choices"] == [] and "thermostat" in payloads[-1]
    stored = _stored(sidecar, response.headers["x-thermostat-generation-id"])
    assert stored["token_count"] == len(kept)


@pytest.mark.parametrize("model_admin_url", [None, "http://127.0.0.1:9"])
def test_calibration_applied_to_sampling_exactly_once(
    make_settings: Callable[..., Settings],
    upstream: FakeUpstream,
    sessions: Any,
    tmp_path: Any,
    model_admin_url: str | None,
) -> None:
    from sqlalchemy import insert

    from monitor.db.models import Calibration, Task
    from monitor.db.session import session_scope
    from monitor.db.types import utcnow

    now = utcnow()
    with session_scope(sessions) as session:
        session.execute(
            insert(Task).values(
                name="hot", config={}, configured=True, created_at=now, updated_at=now
            )
        )
        session.execute(
            insert(Calibration).values(
                task="hot",
                version=1,
                method="temperature",
                temperature=2.0,
                status="active",
                source="manual",
                n_train=0,
                n_holdout=0,
                created_at=now,
                activated_at=now,
            )
        )
    config = tmp_path / "config.yaml"
    config.write_text(
        "tasks:\n  hot:\n    sampling: policy\n    policy: {temperature: 0.5}\n"
        "    apply_calibration_to_sampling: true\n"
    )
    settings = make_settings(
        upstream_url=upstream.base_url, config=config, model_admin_url=model_admin_url
    )
    with serve_app(create_app(settings, "api")) as url:
        response = client(url).chat.completions.with_raw_response.create(
            model="m", messages=CHAT, extra_headers={"X-Thermostat-Task": "hot"}
        )
    sent = upstream.requests[0].json["temperature"]
    # The proxy scales (0.5 * T) unless the model server is told and scales itself.
    assert sent == (0.5 if model_admin_url else 1.0)
    assert json.loads(response.content)["thermostat"]["temperature"] == 2.0


def test_a_cookie_the_upstream_sets_never_reaches_another_clients_request(
    make_settings: Callable[..., Settings], upstream: FakeUpstream
) -> None:
    # By host name: aiohttp's default cookie jar ignores cookies from IP addresses.
    by_name = upstream.base_url.replace("127.0.0.1", "localhost")
    body = {"model": "fake-model", "messages": CHAT, "max_tokens": 4}
    with serve_app(create_app(make_settings(upstream_url=by_name), "api")) as sidecar:
        first = httpx.post(
            f"{sidecar}/v1/chat/completions", json=body, headers={"X-Fake-Mode": "set_cookie=alice"}
        )
        assert first.status_code == 200
        assert "session=alice" in first.headers.get("set-cookie", "")  # back to its own client
        second = httpx.post(
            f"{sidecar}/v1/chat/completions", json=body, headers={"Cookie": "theme=dark"}
        )
    assert second.status_code == 200
    assert upstream.requests[-1].headers.get("cookie") == "theme=dark"  # its own, nothing else
