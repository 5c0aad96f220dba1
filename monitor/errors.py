"""The small error hierarchy every layer raises and one handler renders.

Expected mistakes (bad config, a stale schema, a missing file, an unknown id)
are `ThermostatError`s: the CLI prints their message on one line and the HTTP
layer turns them into a 4xx with an OpenAI-style body. Anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """An exception as one line (its message's first), for one-line errors and logs."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


class ThermostatError(Exception):
    """Base of every expected error; `status_code` is used by the HTTP layer."""

    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class ConfigError(ThermostatError):
    """The config file or environment is invalid; raised at start."""

    code = "config_error"


class DatabaseError(ThermostatError):
    """The database is unreachable or its schema is not what this version needs."""

    status_code = 503
    code = "database_unavailable"


class NotFoundError(ThermostatError):
    status_code = 404
    code = "not_found"


class ConflictError(ThermostatError):
    status_code = 409
    code = "conflict"


class UnauthorizedError(ThermostatError):
    status_code = 401
    code = "unauthorized"


class ValidationFailed(ThermostatError):
    status_code = 422
    code = "invalid_request"
