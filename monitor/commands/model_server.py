"""`thermostat model-server`: the reference OpenAI-compatible server for a local causal LM."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from monitor.commands.serve import port_number
from monitor.errors import ConfigError

if TYPE_CHECKING:
    from monitor.serving.model_server.generation import Engine

# Longest loader message kept in the one-line error (some list every model type).
_MAX_DETAIL = 300


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="folder of a transformers causal LM")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument(
        "--port", type=port_number, default=8001, help="port to bind (default 8001)"
    )
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")


def load(model: str, device: str) -> Engine:
    """Resolve the device and load the engine before serving, failing in one line.

    Loaded in the app's lifespan instead, a broken model folder or a missing
    GPU would end in a traceback from uvicorn's start-up.
    """
    from monitor.serving.model_server import check_model_path
    from monitor.serving.model_server.generation import load_engine, resolve_device

    path = check_model_path(model)
    try:
        resolved = resolve_device(device)
    except ImportError as exc:
        raise ConfigError(f"model-server needs torch and transformers: {exc}") from None
    except RuntimeError as exc:
        raise ConfigError(str(exc)) from None
    try:
        return load_engine(str(path), resolved, model)
    except ImportError as exc:
        raise ConfigError(f"model-server needs torch and transformers: {exc}") from None
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        if len(detail) > _MAX_DETAIL:
            detail = detail[: _MAX_DETAIL - 3] + "..."
        raise ConfigError(f"cannot load the model from {path}: {detail}") from None


def run(args: argparse.Namespace) -> int:
    # Local weights only: never reach for a hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from monitor.logging import setup_logging
    from monitor.serving.model_server import run_model_server

    setup_logging()
    engine = load(args.model, args.device)
    run_model_server(
        args.model, host=args.host, port=args.port, device=engine.device, engine=engine
    )
    return 0
