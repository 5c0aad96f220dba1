"""One renderer for every error the HTTP layer returns: OpenAI-style bodies.

`{"error": {"message", "type", "code", "param"}}`; validation errors name the
offending field in both `param` and the message.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from monitor.errors import ThermostatError, first_line

_TYPES = {401: "authentication_error", 404: "not_found_error", 409: "conflict_error"}


def error_body(status: int, message: str, code: str, param: str | None = None) -> dict[str, Any]:
    kind = _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "code": code, "param": param}}


def error_response(status: int, message: str, code: str, param: str | None = None) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(
        error_body(status, message, code, param), status_code=status, headers=headers
    )


def describe_request_error(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    field = ".".join(loc) or None
    message = str(first.get("msg", "invalid input")).removeprefix("Value error, ")
    if first.get("type") == "json_invalid":
        return "request body is not valid JSON", None
    if first.get("type") == "missing":
        message = "field required"
    return (f"{field}: {message}" if field else message), field


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ThermostatError)
    async def _thermostat_error(_request: Request, exc: ThermostatError) -> JSONResponse:
        return error_response(exc.status_code, exc.message, exc.code, exc.field)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        message, field = describe_request_error(list(exc.errors()))
        return error_response(422, message, "invalid_request", field)

    @app.exception_handler(DataError)
    async def _data_error(_request: Request, exc: DataError) -> JSONResponse:
        # A value the database cannot hold (an id past its integer range, a NUL in
        # text): the client's mistake, never a 500. The database's reason says which.
        reason = first_line(exc.orig) if exc.orig is not None else "invalid value"
        return error_response(422, f"a value cannot be stored: {reason}", "invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), "http_error")
