"""Fixtures for the serving tests: one tiny model per session, one live server.

The server runs for real (uvicorn on a loopback port in a thread) and is driven by
the official openai client, so the wire format is checked by the same parser
applications use. A second, direct copy of the model gives reference logits.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
openai = pytest.importorskip("openai")


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_model_path: Path) -> Path:
    return tiny_model_path


@dataclass
class Reference:
    """The model loaded directly, to recompute what the server should report."""

    model: Any
    tokenizer: Any

    def chat_ids(self, content: str) -> list[int]:
        messages = [{"role": "user", "content": content}]
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def text_ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text)["input_ids"])

    def logprobs(self, ids: list[int]) -> Any:
        """log_softmax of the raw next-token logits after ids (full forward, no cache)."""
        with torch.inference_mode():
            logits = self.model(input_ids=torch.tensor([ids])).logits[0, -1].float()
        return torch.log_softmax(logits, dim=-1)

    def token_id(self, token: str) -> int:
        """Map a reported token string back to its id (unique in this vocabulary)."""
        matches = [i for i in range(len(self.tokenizer)) if self.text(i) == token]
        assert len(matches) == 1, f"token {token!r} is ambiguous: {matches}"
        return matches[0]

    def text(self, token_id: int) -> str:
        return str(self.tokenizer.decode([token_id], skip_special_tokens=False))


@pytest.fixture(scope="session")
def reference(tiny_model_dir: Path) -> Reference:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    return Reference(model, AutoTokenizer.from_pretrained(tiny_model_dir))


@dataclass
class LiveServer:
    base_url: str  # root, e.g. http://127.0.0.1:PORT
    model: str

    def client(self, **headers: str) -> Any:
        return openai.OpenAI(
            base_url=f"{self.base_url}/v1", api_key="x", default_headers=headers, max_retries=0
        )


@pytest.fixture(scope="session")
def server(tiny_model_dir: Path) -> Iterator[LiveServer]:
    import uvicorn

    from monitor.serving.model_server import create_model_server_app
    from monitor.serving.model_server.app import KEEP_ALIVE_S

    app = create_model_server_app(str(tiny_model_dir), device="cpu", served_model_name="tiny")
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_level="warning",
        lifespan="on",
        timeout_keep_alive=KEEP_ALIVE_S,
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, name="model-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("model server did not start")
        time.sleep(0.05)
    port = srv.servers[0].sockets[0].getsockname()[1]
    yield LiveServer(base_url=f"http://127.0.0.1:{port}", model="tiny")
    srv.should_exit = True
    thread.join(timeout=10)
