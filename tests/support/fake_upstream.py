"""A small, real OpenAI-compatible HTTP server for tests (a transport fake).

``FakeUpstream`` runs aiohttp.web on 127.0.0.1 (free port) in a background
thread, so tests can point the proxy, or the official ``openai`` client, at
``.base_url`` (ends with ``/v1``) and assert on ``.requests``. It serves
``/v1/chat/completions``, ``/v1/completions`` and ``/v1/models``, streaming or
not, with deterministic logprobs: seeded by the request, the chosen token with
its logprob and the top-K alternatives, and some positions where the sampled
token is outside the top-K (then appended as a K+1-th alternative, as vLLM
does). It honours ``logprobs``, ``top_logprobs``, ``max_tokens``, ``stream``,
``stream_options.include_usage`` and ``n``.

Behaviours on demand, from the ``X-Fake-Mode`` request header or the settable
``mode`` dict (the header wins), comma-separated:
``error=500`` (OpenAI error body with that status), ``stall=2.5`` (sleep
seconds before answering), ``cut`` (close the connection half-way through a
stream), ``delay_ms=5-20`` (uniform random delay), ``no_logprobs`` (ignore the
logprobs request, like some servers), ``chunk_delay_ms=N`` (a pause between
stream events), ``pretty`` (indented JSON with shuffled key order, to exercise
parsers), ``set_cookie=V`` (a ``Set-Cookie: session=V`` header on the answer),
``hop_header`` (``X-Upstream-Hop`` marked hop-by-hop by ``Connection``, beside
an end-to-end ``X-Upstream-Kept``), ``end=newline`` / ``end=midline`` (a
stream's last event, and then the stream, ends after one line end, without
its blank line and ``[DONE]``, or half-way through its line).

``render_json`` (shuffled keys, random whitespace) is shared with the capture
and splice tests.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

WORDS = [
    " the",
    " answer",
    " is",
    " 4",
    " 42",
    ".",
    ",",
    "\n",
    " \\boxed{",
    "}",
    '"',
    " café",
    " 東京",
    " logprobs",
    "{",
    " so",
    " we",
    " get",
    " x",
    " =",
    " 🙂",
    "\\",
    " not",
    " yes",
]


@dataclass
class Received:
    path: str
    headers: dict[str, str]  # lower-cased names
    json: Any


def parse_mode(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in text.split(","):
        name, _, value = item.strip().partition("=")
        if name:
            out[name] = value
    return out


def shuffled(obj: Any, rng: random.Random) -> Any:
    """The same object with every dict's keys in a random order."""
    if isinstance(obj, dict):
        items = list(obj.items())
        rng.shuffle(items)
        return {k: shuffled(v, rng) for k, v in items}
    if isinstance(obj, list):
        return [shuffled(v, rng) for v in obj]
    return obj


def render_json(obj: Any, rng: random.Random) -> bytes:
    """Valid JSON with shuffled key order, random indentation/separators and escaping."""
    obj = shuffled(obj, rng)
    indent = rng.choice([None, None, 0, 1, 2, "\t"])
    seps = rng.choice([(",", ":"), (", ", ": "), (" ,", " : "), (",\n", ":\t")])
    text = json.dumps(obj, indent=indent, separators=seps, ensure_ascii=rng.random() < 0.5)
    return (text + rng.choice(["", "\n", " \r\n", "\n\n  "])).encode()


# --- deterministic generation --------------------------------------------------


def _logsoftmax(logits: list[float]) -> list[float]:
    m = max(logits)
    z = m + math.log(sum(math.exp(x - m) for x in logits))
    return [x - z for x in logits]


def generate(rng: random.Random, n_tokens: int, words: list[str] = WORDS) -> list[dict]:
    """Positions: {token, logprob, top: [(token, logprob)] over all words, best first}.

    Independent of the K asked for, so asking for logprobs never changes the answer."""
    out = []
    for _ in range(n_tokens):
        lps = _logsoftmax([rng.gauss(0.0, 2.0) for _ in words])
        order = sorted(range(len(words)), key=lambda i: -lps[i])
        # Mostly the best token; now and then a lower one, often outside the top-K.
        pick = order[0] if rng.random() < 0.7 else order[rng.randrange(1, min(8, len(words)))]
        out.append(
            {"token": words[pick], "logprob": lps[pick], "top": [(words[i], lps[i]) for i in order]}
        )
    return out


def _outside(p: dict, k: int) -> bool:
    return all(t != p["token"] for t, _ in p["top"][:k])


def chat_logprobs(positions: list[dict], k: int) -> dict:
    content = []
    for p in positions:
        alts = [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in p["top"][:k]]
        if k and _outside(p, k):
            alts.append(
                {"token": p["token"], "logprob": p["logprob"], "bytes": list(p["token"].encode())}
            )
        content.append(
            {
                "token": p["token"],
                "logprob": p["logprob"],
                "bytes": list(p["token"].encode()),
                "top_logprobs": alts,
            }
        )
    return {"content": content}


def completions_logprobs(positions: list[dict], k: int, offset0: int = 0) -> dict:
    tops, offsets, off = [], [], offset0
    for p in positions:
        d = dict(p["top"][:k])
        d.setdefault(p["token"], p["logprob"])
        tops.append(d)
        offsets.append(off)
        off += len(p["token"])
    return {
        "tokens": [p["token"] for p in positions],
        "token_logprobs": [p["logprob"] for p in positions],
        "top_logprobs": tops,
        "text_offset": offsets,
    }


def _mode_headers(mode: dict[str, str]) -> dict[str, str]:
    if "hop_header" not in mode:
        return {}
    return {
        "Connection": "keep-alive, X-Upstream-Hop",
        "X-Upstream-Hop": "1",
        "X-Upstream-Kept": "1",
    }


def _headers(request: web.Request) -> dict[str, str]:
    return {k.lower(): v for k, v in request.headers.items()}


def _error(status: int, message: str) -> web.Response:
    body = {"error": {"message": message, "type": "server_error", "code": status}}
    return web.json_response(body, status=status)


class FakeUpstream:
    """``with FakeUpstream() as up: OpenAI(base_url=up.base_url, api_key="x")``."""

    def __init__(self, model: str = "fake-model", seed: int = 0) -> None:
        self.model = model
        self.seed = seed
        self.mode: dict[str, str] = {}
        self.requests: list[Received] = []
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # --- lifecycle ---
    def start(self) -> FakeUpstream:
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._serve())
            except BaseException as exc:  # surfaced to start()
                errors.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup() if self._runner else asyncio.sleep(0))
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-upstream", daemon=True)
        self._thread.start()
        ready.wait(10)
        if errors:
            raise errors[0]
        return self

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- handlers ---
    async def _models(self, request: web.Request) -> web.Response:
        self.requests.append(Received(request.path, _headers(request), None))
        return web.json_response(
            {
                "object": "list",
                "data": [{"id": self.model, "object": "model", "created": 0, "owned_by": "fake"}],
            }
        )

    async def _begin(self, request: web.Request) -> tuple[dict, dict[str, str]] | web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "request body is not JSON")
        self.requests.append(Received(request.path, _headers(request), body))
        mode = {**self.mode, **parse_mode(request.headers.get("X-Fake-Mode", ""))}
        if "delay_ms" in mode:
            lo, _, hi = mode["delay_ms"].partition("-")
            await asyncio.sleep(random.uniform(float(lo), float(hi or lo)) / 1000)
        if "stall" in mode:
            await asyncio.sleep(float(mode["stall"] or 5))
        if "error" in mode:
            return _error(int(mode["error"] or 500), "fake upstream error")
        return body, mode

    def _rng(self, body: dict, choice: int) -> random.Random:
        key = json.dumps(
            [self.seed, choice, body.get("messages"), body.get("prompt")],
            sort_keys=True,
            default=str,
        )
        return random.Random(hashlib.sha256(key.encode()).digest())

    def _positions(self, body: dict, choice: int, k: int) -> tuple[list[dict], str]:
        rng = self._rng(body, choice)
        length = rng.randint(6, 20)
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        n = min(length, int(max_tokens)) if max_tokens else length
        return generate(rng, n), ("length" if n < length else "stop")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        begun = await self._begin(request)
        if isinstance(begun, web.Response):
            return begun
        body, mode = begun
        want = bool(body.get("logprobs")) and "no_logprobs" not in mode
        k = int(body.get("top_logprobs") or 0) if want else 0
        gens = [self._positions(body, i, k) for i in range(int(body.get("n") or 1))]
        head = {"id": "chatcmpl-fake", "created": int(time.time()), "model": self.model}
        if body.get("stream"):
            chunks: list[Any] = []
            for i, (pos, finish) in enumerate(gens):
                chunks.append(
                    {
                        "index": i,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                )
                for j, p in enumerate(pos):
                    lp = chat_logprobs([p], k) if want else None
                    chunks.append(
                        {
                            "index": i,
                            "delta": {"content": p["token"]},
                            "logprobs": lp,
                            "finish_reason": finish if j == len(pos) - 1 else None,
                        }
                    )
            events = [{**head, "object": "chat.completion.chunk", "choices": [c]} for c in chunks]
            return await self._stream(request, body, mode, head, events, gens)
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": "".join(p["token"] for p in pos)},
                "logprobs": chat_logprobs(pos, k) if want else None,
                "finish_reason": finish,
            }
            for i, (pos, finish) in enumerate(gens)
        ]
        obj = {**head, "object": "chat.completion", "choices": choices, "usage": _usage(gens)}
        return self._respond(obj, mode)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        begun = await self._begin(request)
        if isinstance(begun, web.Response):
            return begun
        body, mode = begun
        want = body.get("logprobs") is not None and "no_logprobs" not in mode
        k = int(body.get("logprobs") or 0) if want else 0
        gens = [self._positions(body, i, k) for i in range(int(body.get("n") or 1))]
        head = {
            "id": "cmpl-fake",
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.model,
        }
        if body.get("stream"):
            events = []
            for i, (pos, finish) in enumerate(gens):
                off = 0
                for j, p in enumerate(pos):
                    lp = completions_logprobs([p], k, off) if want else None
                    off += len(p["token"])
                    events.append(
                        {
                            **head,
                            "choices": [
                                {
                                    "index": i,
                                    "text": p["token"],
                                    "logprobs": lp,
                                    "finish_reason": finish if j == len(pos) - 1 else None,
                                }
                            ],
                        }
                    )
            return await self._stream(request, body, mode, head, events, gens)
        choices = [
            {
                "index": i,
                "text": "".join(p["token"] for p in pos),
                "logprobs": completions_logprobs(pos, k) if want else None,
                "finish_reason": finish,
            }
            for i, (pos, finish) in enumerate(gens)
        ]
        obj = {**head, "choices": choices, "usage": _usage(gens)}
        return self._respond(obj, mode)

    def _respond(self, obj: dict, mode: dict[str, str]) -> web.Response:
        if "pretty" in mode:
            data = render_json(obj, random.Random(len(self.requests)))
        else:
            data = json.dumps(obj, ensure_ascii=False).encode()
        response = web.Response(body=data, content_type="application/json")
        if "set_cookie" in mode:
            response.set_cookie("session", mode["set_cookie"])
        response.headers.update(_mode_headers(mode))
        return response

    async def _stream(
        self,
        request: web.Request,
        body: dict,
        mode: dict[str, str],
        head: dict,
        events: list[Any],
        gens: list,
    ) -> web.StreamResponse:
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append({**head, "choices": [], "usage": _usage(gens)})
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                **_mode_headers(mode),
            }
        )
        await resp.prepare(request)
        cut_at = len(events) // 2 if "cut" in mode else -1
        chunk_delay = float(mode.get("chunk_delay_ms") or 0) / 1000
        for i, ev in enumerate(events):
            if chunk_delay and i:
                await asyncio.sleep(chunk_delay)
            if i == cut_at:
                # Abort the TCP connection mid-stream: no terminating chunk, no [DONE].
                if request.transport is not None:
                    request.transport.abort()
                return resp
            line = b"data: " + json.dumps(ev, ensure_ascii=False).encode()
            if mode.get("end") and i == len(events) - 1:
                await resp.write(line + b"\n" if mode["end"] == "newline" else line[:-5])
                await resp.write_eof()
                return resp
            await resp.write(line + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


def _usage(gens: list) -> dict[str, int]:
    completion = sum(len(pos) for pos, _ in gens)
    return {"prompt_tokens": 11, "completion_tokens": completion, "total_tokens": 11 + completion}


# --- random response shapes for parser tests -------------------------------------

TRICKY = [
    '"logprobs":{',
    "logprobs",
    '"',
    "\\",
    "}",
    "{",
    "]",
    "\\u0041",
    "\x01",
    "\t",
    " é",
    "東京",
    "🙂",
    '\\"',
    '"}]}',
    " ",
    "",
    "null",
    "content",
]


def random_response(rng: random.Random, endpoint: str, k: int) -> dict:
    """An OpenAI/vLLM-shaped response with the awkward cases: several choices (not
    always in index order), logprobs absent or null, content null, the sampled token
    first (vLLM V1) or appended as K+1-th, -9999.0 sentinels, empty and tricky tokens."""
    words = TRICKY + [f" w{i}" for i in range(8)]
    choices = []
    n_choices = rng.choice([1, 1, 1, 2, 3])
    for index in rng.sample(range(n_choices), n_choices):
        pos = generate(rng, rng.randint(0, 12), words)
        for p in pos:
            if rng.random() < 0.1 and k:  # the K-th alternative masked to vLLM's sentinel
                p["top"][k - 1] = (p["top"][k - 1][0], -9999.0)
                if p["token"] == p["top"][k - 1][0]:
                    p["logprob"] = -9999.0
        shape = rng.random()
        if endpoint == "chat":
            lp: Any = chat_logprobs(pos, k)
            if rng.random() < 0.3:  # vLLM V1 order: sampled token first, then the rest
                for entry in lp["content"]:
                    tops = entry["top_logprobs"]
                    mine = [t for t in tops if t["token"] == entry["token"]][:1]
                    entry["top_logprobs"] = (mine + [t for t in tops if t not in mine])[:k]
            content = None if rng.random() < 0.1 else "".join(p["token"] for p in pos)
            choice = {
                "index": index,
                "message": {"role": "assistant", "content": content},
                "finish_reason": rng.choice(["stop", "length", None]),
            }
        else:
            lp = completions_logprobs(pos, k)
            choice = {
                "index": index,
                "text": "".join(p["token"] for p in pos),
                "finish_reason": rng.choice(["stop", "length"]),
            }
        if shape < 0.1:
            choice["logprobs"] = None
        elif shape > 0.15:  # else: key absent
            choice["logprobs"] = lp
        choice["stop_reason"] = None
        choices.append(choice)
    obj: dict[str, Any] = {
        "id": "x",
        "object": "chat.completion",
        "created": 1,
        "model": rng.choice(["m", "東京-model", None]),
        "choices": choices,
    }
    if rng.random() < 0.8:
        obj["usage"] = {"prompt_tokens": rng.randint(1, 99), "completion_tokens": 5}
    return obj
