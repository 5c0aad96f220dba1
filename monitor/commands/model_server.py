"""`thermostat model-server`: the reference OpenAI-compatible server for a local causal LM."""

from __future__ import annotations

import argparse
import os

from monitor.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="folder of a transformers causal LM")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument("--port", type=int, default=8001, help="port to bind (default 8001)")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")


def run(args: argparse.Namespace) -> int:
    # Local weights only: never reach for a hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from monitor.logging import setup_logging
    from monitor.serving.model_server import check_model_path, run_model_server

    setup_logging()
    check_model_path(args.model)
    try:
        run_model_server(args.model, host=args.host, port=args.port, device=args.device)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return 0
