"""Build a tiny causal language model from text shipped with Thermostat.

The demo and the tests need a real transformers model (real logits, a real chat
template, a real tokenizer) but no machine here can download one. So we train a
byte-level BPE tokenizer and a two-layer Qwen2 model on the small corpus in
``corpus/`` for a few hundred steps: long enough that its next-token
distributions are peaked on plausible tokens with a spread of confidences (which
is what calibration monitoring needs), short enough to finish in seconds on a
laptop CPU.

The build is keyed by a hash of its recipe (hyper-parameters, seed, chat template,
corpus bytes): a directory holding a matching marker is reused as is, so repeated
demo runs and test sessions pay for training once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

CORPUS_DIR = Path(__file__).with_name("corpus")
MARKER_NAME = "thermostat_build.json"
# Files without which from_pretrained cannot load the result; checked on reuse so a
# half-deleted directory is rebuilt rather than trusted.
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", MARKER_NAME)

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = (EOS_TOKEN, PAD_TOKEN, "<|system|>", "<|user|>", "<|assistant|>")

# Qwen2's split pattern: contractions, letter runs, single digits, punctuation runs,
# newlines and spaces. Single digits make arithmetic learnable with a tiny vocabulary.
QWEN2_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# "developer" is the newer OpenAI name for "system"; any other role (tool, function)
# is shown to the model as user text rather than failing the request.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] in ['system', 'developer'] -%}{%- set role = 'system' -%}"
    "{%- elif message['role'] == 'assistant' -%}{%- set role = 'assistant' -%}"
    "{%- else -%}{%- set role = 'user' -%}{%- endif -%}"
    "<|{{ role }}|>{{ message['content'] }}"
    "{%- if role == 'assistant' -%}<|endoftext|>{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)

# Bump "recipe" whenever the build code changes in a way that alters the output,
# so existing directories are rebuilt instead of silently reused.
RECIPE: dict[str, Any] = {
    "recipe": 2,
    "vocab_size": 1024,
    "hidden_size": 64,
    "intermediate_size": 192,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "seq_len": 64,
    "batch_size": 32,
    "steps": 300,
    "lr": 3e-3,
}


def corpus_files() -> list[Path]:
    """The shipped training texts, in a stable order (the order feeds the hash)."""
    return sorted(CORPUS_DIR.glob("*.txt"))


def recipe_hash(seed: int) -> str:
    """Digest of everything that determines the built model."""
    h = hashlib.sha256()
    h.update(json.dumps({"recipe": RECIPE, "seed": seed, "template": CHAT_TEMPLATE}).encode())
    for path in corpus_files():
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def is_built(out_dir: Path, digest: str) -> bool:
    """True when out_dir holds a complete build of exactly this recipe."""
    if not all((out_dir / name).is_file() for name in REQUIRED_FILES):
        return False
    try:
        marker = json.loads((out_dir / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("recipe_hash") == digest


def build_tiny_model(out_dir: Path, *, seed: int = 0, force: bool = False) -> Path:
    """Train (or reuse) the tiny model and return the directory to from_pretrained.

    The build happens in a temporary sibling directory that is moved into place only
    when complete, so an interrupted build never leaves a directory that looks
    finished. A non-empty out_dir that is not one of our builds is refused unless
    force is set, because replacing it would delete someone's files.
    """
    out_dir = Path(out_dir).expanduser().resolve()
    digest = recipe_hash(seed)
    if not force and is_built(out_dir, digest):
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_build(out_dir):
        if not force and is_built(out_dir, digest):  # another builder finished meanwhile
            return out_dir
        foreign = (
            out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / MARKER_NAME).exists()
        )
        if foreign and not force:
            raise FileExistsError(f"{out_dir} exists and is not a Thermostat tiny-model build")
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.build-", dir=out_dir.parent))
        try:
            _build_into(tmp, seed=seed, digest=digest)
            if out_dir.exists():
                shutil.rmtree(out_dir)
            os.replace(tmp, out_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


@contextmanager
def _exclusive_build(out_dir: Path) -> Iterator[None]:
    """One builder of out_dir at a time (two demos started together, parallel test workers).

    Without it the second builder trained a model of its own and then deleted the
    first's finished directory, possibly while something was loading it.
    """
    with open(out_dir.parent / f".{out_dir.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield


def read_corpus() -> tuple[list[str], list[tuple[str, str]]]:
    """Split the corpus into prose paragraphs and (question, answer) pairs.

    Files named ``qa_*.txt`` hold one tab-separated pair per line (``#`` starts a
    comment); every other file is prose with paragraphs separated by blank lines.
    """
    prose: list[str] = []
    pairs: list[tuple[str, str]] = []
    for path in corpus_files():
        text = path.read_text(encoding="utf-8")
        if path.name.startswith("qa_"):
            for line in text.splitlines():
                if not line.strip() or line.startswith("#"):
                    continue
                question, _, answer = line.partition("\t")
                if answer:
                    pairs.append((question.strip(), answer.strip()))
        else:
            prose.extend(p.strip() for p in text.split("\n\n") if p.strip())
    return prose, pairs


def _training_documents(prose: list[str], pairs: list[tuple[str, str]]) -> list[str]:
    """Documents in the exact format serving will show the model.

    Q&A pairs go through the chat template, so the model learns to answer after
    ``<|assistant|>`` and to stop with EOS; prose teaches plain continuation for
    /v1/completions.
    """
    docs = [f"{p}{EOS_TOKEN}" for p in prose]
    docs += [f"<|user|>{q}<|assistant|>{a}{EOS_TOKEN}" for q, a in pairs]
    return docs


def _train_tokenizer(prose: list[str], pairs: list[tuple[str, str]]) -> PreTrainedTokenizerFast:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    # Byte-level BPE: any input string is encodable (no <unk>), and decoding a
    # prefix of the ids yields a prefix of the text, which streaming relies on.
    # The normalizer and pre-tokenizer are exactly Qwen2's, because
    # AutoTokenizer rebuilds a qwen2 model's tokenizer with those (transformers 5
    # ignores the saved pipeline for that model type); matching them keeps the ids
    # identical whichever class loads the files.
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=RECIPE["vocab_size"],
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = prose + [q for q, _ in pairs] + [a for _, a in pairs]
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=list(SPECIAL_TOKENS[2:]),
        clean_up_tokenization_spaces=False,
        model_max_length=RECIPE["max_position_embeddings"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _build_into(tmp: Path, *, seed: int, digest: str) -> None:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    started = time.monotonic()
    random.seed(seed)
    torch.manual_seed(seed)
    prose, pairs = read_corpus()
    tokenizer = _train_tokenizer(prose, pairs)
    eos_id = int(tokenizer.convert_tokens_to_ids(EOS_TOKEN))  # type: ignore[arg-type]
    pad_id = int(tokenizer.convert_tokens_to_ids(PAD_TOKEN))  # type: ignore[arg-type]

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=RECIPE["hidden_size"],
        intermediate_size=RECIPE["intermediate_size"],
        num_hidden_layers=RECIPE["num_hidden_layers"],
        num_attention_heads=RECIPE["num_attention_heads"],
        num_key_value_heads=RECIPE["num_key_value_heads"],
        max_position_embeddings=RECIPE["max_position_embeddings"],
        tie_word_embeddings=True,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    model = Qwen2ForCausalLM(config)

    docs = _training_documents(prose, pairs)
    random.Random(seed).shuffle(docs)
    ids: list[int] = []
    for doc in docs:
        ids.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
    final_loss = _train(model, torch.tensor(ids, dtype=torch.long), seed=seed)

    model.generation_config.eos_token_id = eos_id
    model.generation_config.pad_token_id = pad_id
    save_quietly(model, tokenizer, tmp)
    _check_reload(tmp, tokenizer, docs[:20])
    marker = {
        "recipe_hash": digest,
        "seed": seed,
        "final_loss": round(final_loss, 4),
        "train_tokens": len(ids),
        "build_seconds": round(time.monotonic() - started, 2),
    }
    # Written last: its presence is what marks the directory as complete.
    (tmp / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n")


def save_quietly(model: Any, tokenizer: PreTrainedTokenizerFast, path: Path) -> None:
    """`save_pretrained` without transformers' "Writing model shards" bar.

    The tiny model is one shard written in milliseconds; its bar only broke the
    demo's first step in two. The caller's progress-bar setting is restored.
    """
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def _check_reload(path: Path, built: PreTrainedTokenizerFast, samples: list[str]) -> None:
    """Fail the build if AutoTokenizer would tokenize differently from training.

    Serving loads the tokenizer through AutoTokenizer, whose class choice depends on
    the transformers version; a silent mismatch would make the model see ids it was
    never trained on, so it is checked here once rather than debugged later.
    """
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(path)
    for text in samples:
        want = built(text, add_special_tokens=False)["input_ids"]
        got = loaded(text, add_special_tokens=False)["input_ids"]
        if want != got:
            raise RuntimeError(
                f"reloaded tokenizer ({type(loaded).__name__}) disagrees on {text!r}"
            )


def _train(model: Any, ids: Any, *, seed: int) -> float:
    """A short AdamW run over random windows of the packed corpus; returns last loss."""
    import torch

    seq_len, batch, steps = RECIPE["seq_len"], RECIPE["batch_size"], RECIPE["steps"]
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=RECIPE["lr"], weight_decay=0.01)
    # Linear warm-up then cosine decay: the constant high rate that makes a few
    # hundred steps enough would otherwise leave the last steps noisy.
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=RECIPE["lr"], total_steps=steps, pct_start=0.1
    )
    model.train()
    loss_value = float("nan")
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - seq_len - 1, (batch,), generator=gen)
        x = torch.stack([ids[s : s + seq_len] for s in starts.tolist()])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        loss_value = float(loss.detach())
    model.eval()
    return loss_value
