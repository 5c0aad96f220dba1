"""The small error hierarchy every layer raises and one handler renders.

Expected mistakes (bad config, a stale schema, a missing file, an unknown id)
are `ThermostatError`s: the CLI prints their message on one line and the HTTP
layer turns them into a 4xx with an OpenAI-style body. Anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import re


def first_line(exc: BaseException) -> str:
    """An exception as one line (its message's first), for one-line errors and logs."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


_SECRET_QUERY = re.compile(r"((?:^|[?&;])[^=&;]*(?:pass|secret|token)[^=&;]*=)[^&;#]*", re.I)


def redact_url(url: str) -> str:
    """The URL with any user:password (and `?password=`) masked, so an error line does not leak it.

    The credentials end at the last `@` before the query: a password may hold
    an unescaped `/`, which a split at the first `/` would leave in the clear.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:  # not a URL at all: still no user:password@ in an error line
        scheme, rest = "", url
    before, mark, query = rest.partition("?")
    if "@" in before:
        before = "***@" + before.rpartition("@")[2]
    query = _SECRET_QUERY.sub(r"\1***", query)
    return f"{scheme}{sep}{before}{mark}{query}"


def redact_endpoint(url: str) -> str:
    """A webhook URL as it may be shown: its scheme and host, the rest masked.

    Chat and automation services (Slack, Discord, Teams, Make) put the
    endpoint's credential in the path or the query, so where a URL is shown
    rather than used (log lines, the dashboard) only the host is kept; the
    webhook's id and description tell endpoints on one host apart.
    """
    scheme, sep, rest = url.partition("://")
    before = re.split(r"[?#]", rest, maxsplit=1)[0]
    # As in redact_url: credentials end at the last `@` before the query (a
    # password may hold an unescaped `/`, which urlsplit would leave in the host).
    host, _, path = before.rpartition("@")[2].partition("/")
    if not sep or not scheme or not host:
        return "***"
    hidden = path or len(before) < len(rest)  # a path, a query or a fragment
    return f"{scheme}://{host}" + ("/***" if hidden else "")


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
