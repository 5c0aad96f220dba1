"""Bearer-token checks for the admin API, the dashboard and the feedback API.

Tokens are compared in constant time. Without a configured token the server
answers only loopback clients (the serve command also refuses to bind any
other address without both tokens).
"""

from __future__ import annotations

import hmac
import ipaddress

from pydantic import SecretStr
from starlette.requests import HTTPConnection

from monitor.errors import UnauthorizedError


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def tokens_match(given: str | None, expected: SecretStr) -> bool:
    if given is None:
        return False
    return hmac.compare_digest(given.encode(), expected.get_secret_value().encode())


def bearer_token(connection: HTTPConnection) -> str | None:
    header = connection.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value:
        return None
    return value.strip()


def client_host(connection: HTTPConnection) -> str | None:
    return connection.client.host if connection.client else None


def check_token(connection: HTTPConnection, expected: SecretStr | None, what: str) -> None:
    """Raise 401 unless the request carries the token (or, with none set, is local)."""
    if expected is None:
        if is_loopback(client_host(connection)):
            return
        raise UnauthorizedError(f"no {what} token is configured: only loopback clients are served")
    if not tokens_match(bearer_token(connection), expected):
        raise UnauthorizedError(f"missing or wrong {what} token (Authorization: Bearer ...)")
