"""Offline calibration sets: load labelled JSONL, run it through a causal LM.

``thermostat calibrate`` fits from a labelled file instead of live traffic.
Two kinds of lines:

* ``{"prompt": str, "choices": [str, ...], "answer": int}`` (multiple choice):
  each choice is scored by the sum of its tokens' logprobs after the prompt
  (prompt and choice tokenised separately, then concatenated, so the choice
  tokens are exactly those scored). This handles multi-token choices, and
  for single-token choices it equals the next-token log-softmax. Summed
  logprobs favour short choices; that bias is what temperature and vector
  scaling then calibrate, on the same representation serving would use.
  The result is full "logits" over a fixed label set: (N, C) with -inf
  padding where an example has fewer choices.
* ``{"prompt": str, "target": str}`` (free answer): the model decodes
  greedily as many tokens as the target has; we keep each step's chosen
  logprob and top-K (raw log-softmax, the same representation the proxy
  stores), and the label is whether the decoded text equals the target
  after stripping whitespace.

torch is imported inside the functions so this module loads without it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from monitor.calibration.packing import TokenBatch


@dataclass(frozen=True)
class ChoiceExample:
    prompt: str
    choices: list[str]
    answer: int


@dataclass(frozen=True)
class TargetExample:
    prompt: str
    target: str


Example = ChoiceExample | TargetExample
Progress = Callable[[int, int], None]


def _parse(obj: Any) -> Example:
    if not isinstance(obj, dict):
        raise ValueError("line is not a JSON object")
    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise ValueError("'prompt' must be a non-empty string")
    if "target" in obj and "choices" in obj:
        raise ValueError("line has both 'target' and 'choices'")
    if "target" in obj:
        if not isinstance(obj["target"], str) or not obj["target"].strip():
            raise ValueError("'target' must be a non-empty string")
        return TargetExample(prompt, obj["target"])
    if "choices" in obj:
        choices = obj["choices"]
        if not isinstance(choices, list) or len(choices) < 2:
            raise ValueError("'choices' must be a list of at least 2 strings")
        if not all(isinstance(c, str) and c for c in choices):
            raise ValueError("every choice must be a non-empty string")
        answer = obj.get("answer")
        if isinstance(answer, bool) or not isinstance(answer, int):
            raise ValueError("'answer' must be an integer index into 'choices'")
        if not 0 <= answer < len(choices):
            raise ValueError(f"'answer' {answer} is out of range for {len(choices)} choices")
        return ChoiceExample(prompt, list(choices), answer)
    raise ValueError("line needs 'target' or 'choices' and 'answer'")


def load_calibration_jsonl(
    path: str | Path, max_bad_fraction: float = 0.1
) -> tuple[list[Example], list[tuple[int, str]]]:
    """Examples and (line number, problem) for each skipped line.

    Blank lines are ignored. Raises ValueError (one line) when the file cannot
    be read, has no valid example, or more than ``max_bad_fraction`` of its
    lines are bad.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    examples: list[Example] = []
    problems: list[tuple[int, str]] = []
    total = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        total += 1
        try:
            examples.append(_parse(json.loads(line)))
        except json.JSONDecodeError as exc:
            problems.append((number, f"invalid JSON: {exc.msg}"))
        except ValueError as exc:
            problems.append((number, str(exc)))
    if total == 0:
        raise ValueError(f"{path}: no examples")
    if len(problems) > max_bad_fraction * total or not examples:
        first = problems[0]
        raise ValueError(
            f"{path}: {len(problems)} of {total} lines are invalid (limit "
            f"{max_bad_fraction:.0%}); line {first[0]}: {first[1]}"
        )
    return examples, problems


@dataclass
class CollectedData:
    """What a model run over a calibration set produced."""

    choice_logits: np.ndarray  # float64 (N_mc, C_max), -inf padding
    choice_labels: np.ndarray  # int64 (N_mc,)
    choice_index: list[int] = field(default_factory=list)  # rows -> example index
    sequences: TokenBatch | None = None
    sequence_labels: np.ndarray = field(default_factory=lambda: np.zeros(0))
    sequence_index: list[int] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)  # greedy text per target example


def _score_choices(
    model: Any, tok: Any, items: Sequence[ChoiceExample], device: str, batch_size: int
) -> np.ndarray:
    import torch

    seqs: list[tuple[list[int], int]] = []  # (ids, number of prompt ids)
    for ex in items:
        p_ids = list(tok(ex.prompt)["input_ids"])
        for ch in ex.choices:
            seqs.append((p_ids + list(tok(ch, add_special_tokens=False)["input_ids"]), len(p_ids)))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    scores = np.empty(len(seqs), dtype=np.float64)
    for lo in range(0, len(seqs), batch_size):
        chunk = seqs[lo : lo + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        # Right padding: pads sit after the real tokens, so a causal LM's
        # positions and outputs for the real tokens are unaffected.
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, (s, _) in enumerate(chunk):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        with torch.no_grad():
            out = model(input_ids=ids.to(device), attention_mask=mask.to(device))
        logp = torch.log_softmax(out.logits.double(), dim=-1).cpu()
        for i, (s, n_prompt) in enumerate(chunk):
            pos = torch.arange(n_prompt - 1, len(s) - 1)  # logits at t predict token t+1
            scores[lo + i] = float(logp[i, pos, torch.tensor(s[n_prompt:])].sum())
    out_arr = np.full((len(items), max(len(e.choices) for e in items)), -np.inf)
    k = 0
    for r, ex in enumerate(items):
        out_arr[r, : len(ex.choices)] = scores[k : k + len(ex.choices)]
        k += len(ex.choices)
    return out_arr


def _greedy(
    model: Any, tok: Any, items: Sequence[TargetExample], device: str, batch_size: int, top_k: int
) -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray]], list[str]]:
    import torch

    gens: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    texts: list[str] = []
    side = tok.padding_side
    tok.padding_side = "left"  # decoder-only generation continues from the right edge
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    try:
        for lo in range(0, len(items), batch_size):
            chunk = items[lo : lo + batch_size]
            n_target = [len(tok(e.target, add_special_tokens=False)["input_ids"]) for e in chunk]
            enc = tok([e.prompt for e in chunk], return_tensors="pt", padding=True)
            with torch.no_grad():
                out = model.generate(
                    input_ids=enc["input_ids"].to(device),
                    attention_mask=enc["attention_mask"].to(device),
                    max_new_tokens=max(n_target),
                    min_new_tokens=max(n_target),
                    do_sample=False,
                    output_logits=True,
                    return_dict_in_generate=True,
                    pad_token_id=pad,
                )
            new = out.sequences[:, enc["input_ids"].shape[1] :].cpu()
            logp = torch.log_softmax(torch.stack(out.logits, 1).double(), -1).cpu()
            for i, n in enumerate(n_target):
                lp, toks = logp[i, :n], new[i, :n]
                top_v, top_i = torch.topk(lp, min(top_k, lp.shape[-1]), dim=-1)
                hit = top_i == toks[:, None]
                rank = torch.where(hit.any(1), hit.float().argmax(1), torch.tensor(-1))
                chosen = lp.gather(1, toks[:, None])[:, 0]
                gens.append((chosen.float().numpy(), top_v.float().numpy(), rank.numpy()))
                texts.append(tok.decode(toks, skip_special_tokens=True))
    finally:
        tok.padding_side = side
    return gens, texts


def collect_logits(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    batch_size: int = 8,
    device: str = "cpu",
    progress: Progress | None = None,
    top_k: int = 5,
) -> CollectedData:
    """Run ``examples`` through a transformers causal LM (see module docstring)."""
    model.eval()
    mc = [(i, e) for i, e in enumerate(examples) if isinstance(e, ChoiceExample)]
    tg = [(i, e) for i, e in enumerate(examples) if isinstance(e, TargetExample)]
    total, done = len(examples), 0
    data = CollectedData(choice_logits=np.zeros((0, 2)), choice_labels=np.zeros(0, dtype=np.int64))
    for lo in range(0, len(mc), batch_size):
        part = mc[lo : lo + batch_size]
        logits = _score_choices(model, tokenizer, [e for _, e in part], device, batch_size)
        width = max(data.choice_logits.shape[1], logits.shape[1])
        data.choice_logits = np.vstack([_pad(data.choice_logits, width), _pad(logits, width)])
        data.choice_index += [i for i, _ in part]
        done += len(part)
        if progress:
            progress(done, total)
    data.choice_labels = np.array([e.answer for _, e in mc], dtype=np.int64)
    gens: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    labels: list[float] = []
    for lo in range(0, len(tg), batch_size):
        tpart = tg[lo : lo + batch_size]
        targets = [e for _, e in tpart]
        g, texts = _greedy(model, tokenizer, targets, device, batch_size, top_k)
        gens += g
        data.answers += texts
        labels += [
            float(t.strip() == e.target.strip()) for t, e in zip(texts, targets, strict=True)
        ]
        data.sequence_index += [i for i, _ in tpart]
        done += len(tpart)
        if progress:
            progress(done, total)
    if gens:
        data.sequences = TokenBatch.from_generations(gens)
        data.sequence_labels = np.array(labels, dtype=np.float64)
    return data


def _pad(a: np.ndarray, width: int) -> np.ndarray:
    if a.shape[1] == width:
        return a
    out = np.full((a.shape[0], width), -np.inf)
    out[:, : a.shape[1]] = a
    return out
