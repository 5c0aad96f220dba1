"""The locally built tiny model: reuse, refusal to clobber, and useful outputs."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from monitor.serving import tiny_model  # noqa: E402
from monitor.serving.model_server import check_model_path, run_model_server  # noqa: E402
from monitor.serving.tiny_model import (  # noqa: E402
    MARKER_NAME,
    REQUIRED_FILES,
    build_tiny_model,
    is_built,
    recipe_hash,
)


def test_second_build_reuses_without_training(tiny_model_dir: Path) -> None:
    weights = tiny_model_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    started = time.monotonic()
    assert build_tiny_model(tiny_model_dir) == tiny_model_dir
    assert time.monotonic() - started < 1.0
    assert weights.stat().st_mtime_ns == before
    assert recipe_hash(0) in (tiny_model_dir / MARKER_NAME).read_text()
    assert recipe_hash(0) != recipe_hash(1)


def test_builders_of_one_directory_take_turns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two builders at once (two demos, two test workers): one trains, the other reuses it.

    Training is replaced by a slow stand-in that writes a complete build: what is under
    test is the turn-taking, and real training would take a minute here.
    """
    builds: list[Path] = []

    def slow_build(tmp: Path, *, seed: int, digest: str) -> None:
        builds.append(tmp)
        time.sleep(0.5)
        for name in REQUIRED_FILES:
            (tmp / name).write_text("{}")
        (tmp / MARKER_NAME).write_text(json.dumps({"recipe_hash": digest}))

    monkeypatch.setattr(tiny_model, "_build_into", slow_build)
    out_dir = tmp_path / "model"
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: build_tiny_model(out_dir), range(2)))
    assert results == [out_dir, out_dir]
    assert len(builds) == 1, builds  # the second builder reused the first's build
    assert is_built(out_dir, recipe_hash(0))


def test_refuses_to_replace_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        build_tiny_model(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_chat_template_and_special_tokens(reference: Any) -> None:
    tok = reference.tokenizer
    text = tok.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert text == "<|system|>Be brief.<|user|>Hi<|assistant|>"
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token == "<|pad|>"
    assert 512 <= len(tok) <= 2048


def test_outputs_are_peaked_with_a_spread_of_confidence(reference: Any) -> None:
    vocab = len(reference.tokenizer)
    top_probs = []
    ids = reference.text_ids("The morning market opens before the")
    for _ in range(16):
        probs = reference.logprobs(ids).exp()
        top_probs.append(float(probs.max()))
        ids.append(int(torch.argmax(probs)))
    top = torch.tensor(top_probs)
    assert float(top.mean()) > 50 / vocab  # far from uniform noise
    assert float(top.max() - top.min()) > 0.2  # confident in some places, not others
    assert float(top.min()) < 0.95


def test_missing_model_path_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist") as info:
        run_model_server(str(tmp_path / "absent"))
    assert "\n" not in str(info.value)
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        check_model_path(str(tmp_path))
