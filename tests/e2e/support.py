"""Helpers for the end-to-end tests: a sharper fake model, a signed-webhook receiver,
the official client, feedback, a simulated grader, sidecar subprocesses and polling.

Everything runs on loopback; every wait is a poll with a deadline.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, TypeVar

import httpx
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from monitor.calibration.aggregation import generation_confidence
from monitor.calibration.packing import from_openai_logprobs
from tests.support.fake_upstream import WORDS, FakeUpstream
from tests.support.servers import free_port, serve_handler

TOP_K = 5
T = TypeVar("T")


# --- the upstream model -------------------------------------------------------------


def _log_softmax(logits: list[float]) -> list[float]:
    m = max(logits)
    z = m + math.log(sum(math.exp(x - m) for x in logits))
    return [x - z for x in logits]


class SharpUpstream(FakeUpstream):
    """FakeUpstream with a sharper, mostly-greedy model and one-token answers.

    The stock generator (logits ~ N(0, 2) over 24 words, the top token only
    70% of the time, 6-20 tokens) gives a raw geometric-mean confidence whose
    ECE against a true temperature of 2.5 is only 0.13-0.17, straddling the
    0.15 threshold. Here each request draws its own sharpness (logits ~ N(0,
    s), s ~ U(2, 10)) and answers one token, the top one 95% of the time: the
    raw confidence spreads over (0.2, 1) and is clearly overconfident at
    T* = 2.5 (ECE about 0.2), and one label per answer carries as much
    information about T as one label can. Deterministic per prompt, like the
    base class; everything else (HTTP, formats, K+1 alternatives) is the base.
    """

    def _positions(self, body: dict, choice: int, k: int) -> tuple[list[dict], str]:
        rng = self._rng(body, choice)
        sigma = rng.uniform(2.0, 10.0)
        lps = _log_softmax([rng.gauss(0.0, sigma) for _ in WORDS])
        order = sorted(range(len(WORDS)), key=lambda i: -lps[i])
        pick = order[0] if rng.random() < 0.95 else order[rng.randrange(1, 3)]
        top = [(WORDS[i], lps[i]) for i in order]
        return [{"token": WORDS[pick], "logprob": lps[pick], "top": top}], "stop"


# --- the client side ----------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """What the application saw for one request."""

    prompt: int
    generation_id: str
    confidence: float
    raw_confidence: float
    calibration_version: int | None
    entries: list[dict[str, Any]]  # chat logprob entries as the client received them

    @property
    def greedy(self) -> bool:
        """The chosen token is the top-1 alternative."""
        return all(e["top_logprobs"][0]["token"] == e["token"] for e in self.entries)


def ask(client: Any, task: str, prompt: int) -> Answer:
    """One chat completion through the sidecar with the official `openai` client."""
    response = client.chat.completions.create(
        model="fake-model",
        messages=[{"role": "user", "content": f"question {prompt}"}],
        max_tokens=1,
        logprobs=True,
        top_logprobs=TOP_K,
        extra_headers={"X-Thermostat-Task": task},
    )
    thermostat = response.model_extra["thermostat"]
    content = response.choices[0].logprobs.content
    return Answer(
        prompt=prompt,
        generation_id=thermostat["generation_id"],
        confidence=float(thermostat["confidence"]),
        raw_confidence=float(thermostat["raw_confidence"]),
        calibration_version=thermostat["calibration_version"],
        entries=[entry.model_dump() for entry in content],
    )


def ask_many(client: Any, task: str, prompts: Sequence[int], threads: int = 8) -> list[Answer]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda p: ask(client, task, p), prompts))


def true_probability(answer: Answer, temperature: float) -> float:
    """The chance the answer is right in the simulated world (cf. monitor/demo/workload.py)."""
    chosen, top, rank = from_openai_logprobs(answer.entries, TOP_K)
    value = generation_confidence(
        chosen.tolist(), top.tolist(), [int(r) for r in rank], temperature, "geometric_mean"
    )
    assert value is not None
    return value


def grade(answer: Answer, temperature: float, seed: int) -> bool:
    """A Bernoulli label, seeded per prompt so a run is reproducible."""
    rng = random.Random(f"{seed}:{answer.prompt}")
    return rng.random() < true_probability(answer, temperature)


def get_json(admin: httpx.Client, path: str, **params: Any) -> Any:
    """GET an admin route that must answer 200; its JSON body."""
    response = admin.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def post_feedback(base_url: str, items: list[dict[str, Any]]) -> None:
    """Feedback in batches of up to 1,000 (each batch is one transaction); all must be 201."""
    with httpx.Client(base_url=base_url, timeout=60) as http:
        for lo in range(0, len(items), 1000):
            response = http.post("/v1/feedback/batch", json={"items": items[lo : lo + 1000]})
            assert response.status_code == 207, response.text
            statuses = [r.get("status") for r in response.json()["items"]]
            assert set(statuses) == {201}, statuses[:10]


# --- waiting ------------------------------------------------------------------------


def wait_for(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll `probe` until it returns something truthy; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# --- webhooks -----------------------------------------------------------------------


@dataclass
class WebhookReceiver:
    """A real loopback receiver that verifies Standard Webhooks signatures."""

    secret: str
    url: str = ""
    received: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (webhook-id, body)
    rejected: list[str] = field(default_factory=list)  # bad signatures, never expected
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every verified request's body, re-sends included."""
        with self.lock:
            return [body for _, body in self.received]

    def of_type(self, event_type: str) -> list[dict[str, Any]]:
        """Distinct messages of a type: a re-send carries the same webhook-id and is
        the same notification to a Standard Webhooks receiver, which dedupes on it."""
        with self.lock:
            seen: dict[str, dict[str, Any]] = {}
            for message_id, body in self.received:
                if body["type"] == event_type:
                    seen.setdefault(message_id, body)
            return list(seen.values())


@contextmanager
def webhook_receiver(
    secret: str, on_request: Callable[[], None] | None = None
) -> Iterator[WebhookReceiver]:
    """`on_request` runs inside each request's handling, before the answer is sent."""
    receiver = WebhookReceiver(secret=secret)
    verifier = Webhook(secret)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            if on_request is not None:
                on_request()
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                payload = verifier.verify(body, headers)
            except WebhookVerificationError as exc:
                with receiver.lock:
                    receiver.rejected.append(str(exc))
                self.send_response(400)
            else:
                with receiver.lock:
                    receiver.received.append((headers["webhook-id"], payload))
                self.send_response(204)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    with serve_handler(Handler) as url:
        receiver.url = url
        yield receiver


# --- sidecar subprocesses -----------------------------------------------------------


@dataclass
class Sidecar:
    """`python -m monitor serve --role ROLE --port PORT` as a real process."""

    role: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.role} exited early:\n{self.log()}")
            try:
                return httpx.get(self.base_url + "/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, timeout, f"{self.role} on port {self.port} to be ready", 0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_sidecar(role: str, port: int, env: dict[str, str], log_dir: Path) -> Sidecar:
    child = {k: v for k, v in os.environ.items() if not k.startswith("THERMOSTAT_")}
    child.update({"PYTHONUNBUFFERED": "1", **env})
    log_path = log_dir / f"{role}-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "monitor", "serve", "--role", role, "--port", str(port)],
            env=child,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=Path(__file__).resolve().parents[2],
        )
    return Sidecar(role, port, process, log_path)


@contextmanager
def api_replicas(
    count: int, db_url: str, upstream_url: str, log_dir: Path, env: dict[str, str] | None = None
) -> Iterator[list[Sidecar]]:
    """`count` real api processes on one database and upstream, each with its own
    home, like replicas behind a load balancer; ready on entry, stopped on exit."""
    sidecars: list[Sidecar] = []
    try:
        for n in range(count):
            replica_env = {
                "THERMOSTAT_DATABASE_URL": db_url,
                "THERMOSTAT_UPSTREAM_URL": upstream_url,
                "THERMOSTAT_HOME": str(log_dir / f"home{n}"),
                "THERMOSTAT_LOG_LEVEL": "WARNING",
                **(env or {}),
            }
            sidecars.append(start_sidecar("api", free_port(), replica_env, log_dir))
        for sidecar in sidecars:
            sidecar.wait_ready()
        yield sidecars
    finally:
        for sidecar in sidecars:
            sidecar.stop()


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, default=str)[:3000]
