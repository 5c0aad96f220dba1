"""`thermostat model-server`: the reference OpenAI-compatible server for a local causal LM."""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monitor.commands.serve import port_number, positive_int
from monitor.errors import ConfigError, first_line

if TYPE_CHECKING:
    from monitor.serving.model_server.generation import Engine

log = logging.getLogger(__name__)

# Longest loader message kept in the one-line error (some list every model type).
_MAX_DETAIL = 300


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="folder of a transformers causal LM")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument(
        "--port", type=port_number, default=8001, help="port to bind (default 8001)"
    )
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch CPU threads (default: torch's, one per core); 1 suits a small model",
    )


def check_model_dir(model: str) -> Path:
    """The model folder, if it holds a causal LM config and a tokenizer that work.

    Cheap next to loading the weights, so `calibrate` runs it before opening
    the database. It names the problem itself: transformers' own messages list
    every model type it knows, `AutoTokenizer` on an empty config blames the
    tokenizer backend instead of the config, and with a config but no tokenizer
    files it quietly builds a tokenizer that turns every prompt into nothing.
    """
    from monitor.serving.model_server import check_model_path

    # Local files only, set before transformers loads: never reach for a hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    path = check_model_path(model)
    problem = _config_problem(path) or _tokenizer_problem(path)
    if problem:
        raise ConfigError(f"cannot load the model from {path}: {problem}")
    return path


def _config_problem(path: Path) -> str | None:
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        return f"config.json is not valid JSON ({exc})"
    if not isinstance(config, dict):
        return "config.json is not a JSON object"
    if "auto_map" in config:
        return None  # remote code: transformers says why it will not run it
    model_type = config.get("model_type")
    if not model_type or not isinstance(model_type, str):
        return "config.json has no model_type: not a transformers model config"
    version = _transformers().__version__
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if model_type not in CONFIG_MAPPING_NAMES:
        return f"config.json: model_type {model_type!r} is unknown to transformers {version}"
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return f"config.json: model_type {model_type!r} is not a causal language model"
    return None


def _tokenizer_problem(path: Path) -> str | None:
    try:
        tokenizer: Any = _transformers().AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:  # `tokenizers` raises a bare Exception on a malformed file
        return f"the tokenizer does not load: {first_line(exc)}"
    if not tokenizer.encode("hello world", add_special_tokens=False):
        return "no usable tokenizer (it encodes text to no tokens; tokenizer.json missing?)"
    return None


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise ConfigError(f"loading a model needs torch and transformers: {exc}") from None
    return transformers


def load(model: str, device: str, threads: int | None = None) -> Engine:
    """Check the folder, resolve the device and load the engine, failing in one line.

    Loaded in the app's lifespan instead, a broken model folder or a missing
    GPU would end in a traceback from uvicorn's start-up. `threads` sets torch's
    CPU threads first: a small model's steps are too small to split, and its
    threads then only wait on each other, the longer the busier the machine (the
    demo's traffic took 4 times as long with two threads as with one beside
    another busy process on a 2-core machine, and 1.7 times as long alone).
    """
    return load_checked(check_model_dir(model), device, model, threads)


def load_checked(path: Path, device: str, name: str, threads: int | None = None) -> Engine:
    """`load` for a folder `check_model_dir` already passed (`calibrate` checks early).

    `calibrate` loads its model here too, so both commands word a failure alike.
    """
    from monitor.serving.model_server.generation import load_engine, resolve_device

    try:
        resolved = resolve_device(device)  # imports torch: missing, it is a one-line error
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
    except ImportError as exc:
        raise ConfigError(f"loading a model needs torch and transformers: {exc}") from None
    except RuntimeError as exc:
        raise ConfigError(str(exc)) from None
    try:
        return load_engine(str(path), resolved, name)
    except ImportError as exc:
        raise ConfigError(f"loading a model needs torch and transformers: {exc}") from None
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        if len(detail) > _MAX_DETAIL:
            detail = detail[: _MAX_DETAIL - 3] + "..."
        raise ConfigError(f"cannot load the model from {path}: {detail}") from None


def run(args: argparse.Namespace) -> int:
    from monitor.logging import setup_logging
    from monitor.serving.model_server import run_model_server

    setup_logging()
    engine = load(args.model, args.device, args.threads)
    if engine.device == "cpu":
        import torch

        log.info("model on cpu; torch threads: %d", torch.get_num_threads())
    run_model_server(
        args.model, host=args.host, port=args.port, device=engine.device, engine=engine
    )
    return 0
