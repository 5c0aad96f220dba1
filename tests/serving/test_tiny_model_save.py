"""Saving the tiny model prints no progress bar and leaves the caller's setting alone."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM
from transformers.utils import logging as hf_logging

from monitor.serving.tiny_model import save_quietly


@pytest.mark.parametrize("bars_enabled", [True, False])
def test_save_shows_no_bar_and_restores_the_setting(
    tmp_path: Path, tiny_model_dir: Path, capfd: pytest.CaptureFixture[str], bars_enabled: bool
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    model = Qwen2ForCausalLM(config)
    before = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if bars_enabled else hf_logging.disable_progress_bar)()
    try:
        capfd.readouterr()
        save_quietly(model, tokenizer, tmp_path)
        captured = capfd.readouterr()
        assert hf_logging.is_progress_bar_enabled() is bars_enabled
    finally:
        (hf_logging.enable_progress_bar if before else hf_logging.disable_progress_bar)()
    assert "Writing model shards" not in captured.err + captured.out
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert reloaded.config.hidden_size == 8
    assert AutoTokenizer.from_pretrained(tmp_path).get_vocab() == tokenizer.get_vocab()
