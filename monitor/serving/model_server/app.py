"""FastAPI app of the reference OpenAI-compatible model server.

It exists so that Thermostat can be demonstrated and tested end to end without
vLLM: any local transformers causal LM behind the same wire format (chat and
legacy completions, streaming or not, logprobs with top alternatives). Logprobs
are raw, as vLLM reports them by default, because that is what the monitor fits
temperatures on.

The model loads in the lifespan, not at import or construction, unless the caller
hands over a loaded engine (the command line does, so that a model that cannot
load is a one-line error, not a traceback from uvicorn's start-up). Generation
runs in a worker thread so /healthz and the admin routes answer during a long
generation.

This module builds the app and renders every error in OpenAI's shape; the
routes live in ``openai_routes.py`` and ``admin_routes.py``, the request-to-
generation steps in ``inference.py`` and the wire format in ``responses.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .admin_routes import install_admin_routes
from .calibration import CalibrationStore
from .generation import Engine, load_engine
from .openai_routes import install_openai_routes
from .responses import error_response, validation_message
from .schemas import RequestError

# Idle connections outlive the clients' (as the sidecar's keep_alive_s): uvicorn's
# own 5 s equals httpx's and the openai SDK's, and the close races a reuse.
KEEP_ALIVE_S = 75


def check_model_path(model_path: str) -> Path:
    """Fail fast, in one line, on a path that cannot be a transformers model."""
    path = Path(model_path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model path does not exist: {path}")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no config.json in {path}: not a transformers model directory")
    return path


def create_model_server_app(
    model_path: str,
    device: str = "auto",
    *,
    served_model_name: str | None = None,
    engine: Engine | None = None,
) -> FastAPI:
    """Build the app; the model loads when it starts, unless `engine` is already loaded."""
    path = check_model_path(model_path)
    if device not in ("auto", "cpu", "cuda", "mps") and not device.startswith("cuda:"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, not {device!r}")
    name = served_model_name or str(model_path)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if engine is None:
            app.state.engine = await asyncio.to_thread(load_engine, str(path), device, name)
        else:
            app.state.engine = engine
        try:
            yield
        finally:
            app.state.engine = None

    app = FastAPI(title="Thermostat reference model server", lifespan=lifespan)
    app.state.engine = None
    app.state.calibration = CalibrationStore()
    app.state.started = int(time.time())
    _install_error_handlers(app)
    install_openai_routes(app)
    install_admin_routes(app)
    return app


def run_model_server(
    model_path: str,
    host: str = "127.0.0.1",
    port: int = 8001,
    device: str = "auto",
    *,
    engine: Engine | None = None,
) -> None:
    """Serve until interrupted. Raises FileNotFoundError for a missing model path."""
    import uvicorn

    app = create_model_server_app(model_path, device, engine=engine)
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_keep_alive=KEEP_ALIVE_S)


# ---------------------------------------------------------------- errors


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestError)
    async def _request_error(_: Request, exc: RequestError) -> Response:
        return error_response(400, exc.message, param=exc.param, code=exc.code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        # OpenAI answers malformed parameters with 400, not FastAPI's 422.
        message, param = validation_message(list(exc.errors()))
        return error_response(400, message, param=param, code="invalid_value")

    @app.exception_handler(Exception)
    async def _crash(_: Request, exc: Exception) -> Response:
        return error_response(500, f"internal error: {exc}", type_="server_error")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(exc.status_code, str(exc.detail), type_=kind)
