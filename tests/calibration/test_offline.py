"""Offline calibration sets: JSONL loading and a tiny transformers model run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from monitor.calibration import fit_sequence_temperature, fit_temperature
from monitor.calibration.offline import (
    ChoiceExample,
    TargetExample,
    collect_logits,
    load_calibration_jsonl,
)


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_load_reports_bad_lines(tmp_path: Path) -> None:
    good = [json.dumps({"prompt": f"q{i}", "target": "a"}) for i in range(18)]
    lines = [
        *good,
        json.dumps({"prompt": "q", "choices": ["a", "b"], "answer": 1}),
        "",
        "{not json",
        json.dumps({"prompt": "q", "choices": ["a", "b"], "answer": 5}),
    ]
    examples, problems = load_calibration_jsonl(write(tmp_path / "c.jsonl", lines))
    assert len(examples) == 19
    assert isinstance(examples[-1], ChoiceExample) and examples[-1].answer == 1
    assert [n for n, _ in problems] == [21, 22]
    assert "invalid JSON" in problems[0][1] and "out of range" in problems[1][1]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"prompt": "", "target": "a"}, "prompt"),
        ({"prompt": "q"}, "needs 'target'"),
        ({"prompt": "q", "choices": ["a"], "answer": 0}, "at least 2"),
        ({"prompt": "q", "choices": ["a", "b"], "answer": True}, "integer"),
        ({"prompt": "q", "target": "a", "choices": ["a", "b"]}, "both"),
        ([1, 2], "not a JSON object"),
    ],
)
def test_too_many_bad_lines_is_one_line_error(tmp_path: Path, line: object, message: str) -> None:
    lines = [json.dumps(line), json.dumps({"prompt": "q", "target": "a"})]
    with pytest.raises(ValueError, match=message) as err:
        load_calibration_jsonl(write(tmp_path / "c.jsonl", lines))
    assert "\n" not in str(err.value) and "1 of 2 lines" in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read"):
        load_calibration_jsonl(tmp_path / "nope.jsonl")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    import os

    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, GPT2Config, PreTrainedTokenizerFast

    sentences = [
        "The capital of France is Paris.",
        "The capital of Italy is Rome.",
        "Two plus two is four.",
        "The sky is blue and the grass is green.",
    ] * 5
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<pad>", "<eos>"])
    tok.train_from_iterator(sentences, trainer)
    from tokenizers import decoders

    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>"
    )
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=fast.vocab_size,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
    )
    model = AutoModelForCausalLM.from_config(config)
    path = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(path)
    fast.save_pretrained(path)
    from transformers import AutoTokenizer

    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"  # loading must not need the hub
    try:
        return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    finally:
        if old is None:
            del os.environ["HF_HUB_OFFLINE"]
        else:
            os.environ["HF_HUB_OFFLINE"] = old


def test_collect_logits_with_tiny_model(tiny_model) -> None:  # type: ignore[no-untyped-def]
    import torch

    model, tok = tiny_model
    examples = [
        ChoiceExample("The capital of France is", [" Paris", " Rome", " blue"], 0),
        ChoiceExample("Two plus two is", [" four", " green"], 0),
        TargetExample("The capital of Italy is", " Rome."),
        TargetExample("The sky is", " blue"),
        ChoiceExample("The grass is", [" green", " blue"], 1),
    ]
    seen: list[tuple[int, int]] = []
    data = collect_logits(
        model, tok, examples, batch_size=2, progress=lambda d, t: seen.append((d, t))
    )
    assert seen[-1] == (5, 5)
    assert data.choice_logits.shape == (3, 3)
    assert np.isneginf(data.choice_logits[1, 2]) and np.isneginf(data.choice_logits[2, 2])
    assert data.choice_labels.tolist() == [0, 0, 1] and data.choice_index == [0, 1, 4]
    # the batched, padded score equals an unbatched computation by hand
    p_ids = tok("Two plus two is")["input_ids"]
    c_ids = tok(" green", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([p_ids + c_ids])).logits.double(), -1)[0]
    by_hand = sum(float(logp[len(p_ids) - 1 + j, t]) for j, t in enumerate(c_ids))
    assert data.choice_logits[1, 1] == pytest.approx(by_hand, abs=1e-5)
    # free-answer examples: greedy tokens, their logprobs, top-K and a label
    assert data.sequences is not None and data.sequences.n_generations == 2
    assert data.sequence_index == [2, 3]
    n_target = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in (" Rome.", " blue")]
    assert data.sequences.lengths.tolist() == n_target
    assert (data.sequences.chosen_rank == 0).all()  # greedy picks the top token
    np.testing.assert_allclose(data.sequences.chosen, data.sequences.top[:, 0], atol=2e-2)
    assert (data.sequences.chosen <= 0).all()
    targets = [e.target for e in examples[2:4] if isinstance(e, TargetExample)]
    expected = [float(a.strip() == t.strip()) for a, t in zip(data.answers, targets, strict=True)]
    assert data.sequence_labels.tolist() == expected
    # and the outputs feed the fitters
    assert 0.05 <= fit_temperature(data.choice_logits, data.choice_labels) <= 20
    labels = np.array([1.0, 0.0])
    assert 0.05 <= fit_sequence_temperature(data.sequences, labels).temperature <= 20
