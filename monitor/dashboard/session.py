"""Dashboard sign-in: a signed, expiring session cookie and session-bound CSRF tokens.

Why hand-rolled HMAC instead of itsdangerous or Starlette's SessionMiddleware:
itsdangerous is not a dependency (and SessionMiddleware needs it), and the
need is tiny: one signed value `v1.<expires>.<session id>.<mac>`. The MAC key
is derived from the admin token, so rotating the token signs every session
out; without a token (loopback-only mode) a random per-process key is used.
Signing out clears the cookie and records the session id as revoked
(`dashboard_revoked_sessions`), so a copy of the cookie held elsewhere ends
too, in every api process; the row is deleted once the cookie has expired.

The contract makes the admin token the bearer token "for `/api/*` and the
dashboard", so `Authorization: Bearer <admin token>` opens every page and
action too (compared in constant time by `monitor.auth`, as the API does); a
wrong bearer token is counted as a refused dashboard token and gets the
login redirect like no credentials at all.

CSRF: every form carries `csrf_token = HMAC(key, "csrf." + session id)`,
checked in constant time on POST. The cookie is also SameSite=Strict, so a
cross-site form never carries it; the token is the defence in depth. Exempt:
the login form (there is one identity, the admin token, so a forged login
would need the token itself); requests authorised by the bearer header (a
browser never adds an Authorization header on its own, so a cross-site form
cannot forge one); and sign-out (a forged sign-out harms nothing, and a
cross-site POST carries no SameSite=Strict cookie anyway).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session

from monitor.auth import bearer_token, client_host, is_loopback, tokens_match
from monitor.dashboard import repository
from monitor.deps import SessionDep, get_runtime
from monitor.refused_tokens import refused_tokens
from monitor.settings import Settings

SESSION_COOKIE = "thermostat_session"
FLASH_COOKIE = "thermostat_flash"
SESSION_TTL_S = 12 * 3600
_KEY_ATTR = "dashboard_signing_key"


@dataclass(frozen=True)
class DashboardSession:
    """Who is looking: a signed-in operator, a script holding the admin token as a
    bearer header, or a loopback client with no token configured."""

    session_id: str
    expires_at: int
    loopback_mode: bool
    csrf_token: str
    bearer: bool = False  # the request carries the admin bearer token: no CSRF token needed

    @property
    def from_cookie(self) -> bool:
        """Whether a signed session cookie backs this (so signing out can revoke it)."""
        return not self.loopback_mode and self.expires_at > 0


class LoginRequired(Exception):
    """Raised by the page dependency; the router turns it into a 303 to the login page."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


class CsrfRejected(Exception):
    """A POST without a valid CSRF token: answered 403."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def signing_key(request: Request) -> bytes:
    settings: Settings = request.app.state.settings
    if settings.admin_token is not None:
        secret = settings.admin_token.get_secret_value().encode()
        return hashlib.sha256(b"thermostat-dashboard-session\x00" + secret).digest()
    key = getattr(request.app.state, _KEY_ATTR, None)
    if not isinstance(key, bytes):
        key = secrets.token_bytes(32)
        setattr(request.app.state, _KEY_ATTR, key)
    return key


def _mac(key: bytes, message: str) -> str:
    return _b64(hmac.new(key, message.encode(), hashlib.sha256).digest())


def csrf_for(key: bytes, session_id: str) -> str:
    return _mac(key, f"csrf.{session_id}")


def issue_session(key: bytes, now: float | None = None) -> tuple[str, DashboardSession]:
    """A new cookie value and the session it encodes."""
    expires = int((now if now is not None else time.time()) + SESSION_TTL_S)
    session_id = secrets.token_urlsafe(18)
    body = f"v1.{expires}.{session_id}"
    cookie = f"{body}.{_mac(key, body)}"
    return cookie, DashboardSession(session_id, expires, False, csrf_for(key, session_id))


def read_session(
    key: bytes, cookie: str | None, now: float | None = None
) -> DashboardSession | None:
    """The session a cookie encodes, or None if it is malformed, forged or expired."""
    if not cookie:
        return None
    parts = cookie.split(".")
    if len(parts) != 4 or parts[0] != "v1":
        return None
    body = ".".join(parts[:3])
    if not hmac.compare_digest(_mac(key, body), parts[3]):
        return None
    try:
        expires = int(parts[1])
    except ValueError:
        return None
    if expires <= (now if now is not None else time.time()):
        return None
    return DashboardSession(parts[2], expires, False, csrf_for(key, parts[2]))


def login_allowed_without_token(request: Request) -> bool:
    """With no admin token, loopback clients are served without login (as the API does)."""
    settings: Settings = request.app.state.settings
    return settings.admin_token is None and is_loopback(client_host(request))


def admin_bearer(request: Request) -> bool:
    """Whether the request carries `Authorization: Bearer <admin token>` (constant time)."""
    settings: Settings = request.app.state.settings
    if settings.admin_token is None:
        return False
    return tokens_match(bearer_token(request), settings.admin_token)


def signed_in(request: Request, db: Session) -> DashboardSession | None:
    """The request's session if its cookie is valid and was not signed out."""
    settings: Settings = request.app.state.settings
    if settings.admin_token is None:
        return None
    session = read_session(signing_key(request), request.cookies.get(SESSION_COOKIE))
    if session is None or repository.is_revoked(db, session.session_id):
        return None
    return session


def revoke(db: Session, session: DashboardSession) -> None:
    """End the session everywhere; forget sign-outs whose cookies have expired anyway."""
    now = datetime.now(UTC)
    repository.forget_expired_revocations(db, now)
    repository.add_revocation(
        db, session.session_id, datetime.fromtimestamp(session.expires_at, UTC)
    )


def current_session(request: Request, db: SessionDep) -> DashboardSession:
    """The page dependency: a valid session cookie, the admin bearer token, or loopback
    mode, else LoginRequired.

    With both a cookie and the bearer token the cookie's session is kept (so a
    sign-out still revokes it), marked as bearer-authorised.
    """
    bearer = admin_bearer(request)
    session = signed_in(request, db)
    if session is not None:
        return replace(session, bearer=True) if bearer else session
    if bearer:
        return DashboardSession("bearer", 0, False, csrf_for(signing_key(request), "bearer"), True)
    if login_allowed_without_token(request):
        return DashboardSession("loopback", 0, True, csrf_for(signing_key(request), "loopback"))
    if bearer_token(request) is not None and request.app.state.settings.admin_token is not None:
        # A bearer token was sent and is not the admin token: a refusal, counted as on the API.
        refused_tokens(get_runtime(request)).refused("dashboard", client_host(request))
    path = request.url.path
    if request.url.query and request.method == "GET":
        path += "?" + request.url.query
    raise LoginRequired(path)


def check_csrf(session: DashboardSession, given: str | None) -> None:
    if not given or not hmac.compare_digest(given.encode(), session.csrf_token.encode()):
        raise CsrfRejected()


def check_admin_token(settings: Settings, given: str) -> bool:
    return settings.admin_token is not None and tokens_match(given, settings.admin_token)


def set_session_cookie(response: Response, cookie: str, secure: bool) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=SESSION_TTL_S,
        path="/",
        httponly=True,
        samesite="strict",
        secure=secure,
    )


def clear_session_cookie(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")


def login_redirect(next_path: str) -> RedirectResponse:
    target = "/dashboard/login"
    if next_path and next_path.startswith("/dashboard") and next_path != "/dashboard/login":
        target += "?next=" + quote(next_path, safe="")
    return RedirectResponse(target, status_code=303)


def safe_next(value: str | None) -> str:
    """Only same-site dashboard paths: never an open redirect."""
    if value and value.startswith("/dashboard") and not value.startswith("//"):
        return value
    return "/dashboard"


# ---- flash messages: one signed, short-lived cookie read by the next page ----


def flash(response: Response, key: bytes, message: str, kind: str = "ok") -> None:
    body = _b64(json.dumps({"m": message[:500], "k": kind}).encode())
    response.set_cookie(
        FLASH_COOKIE,
        f"{body}.{_mac(key, 'flash.' + body)}",
        max_age=120,
        path="/dashboard",
        httponly=True,
        samesite="strict",
    )


def pop_flash(request: Request) -> dict[str, Any] | None:
    raw = request.cookies.get(FLASH_COOKIE)
    if not raw or "." not in raw:
        return None
    body, mac = raw.rsplit(".", 1)
    if not hmac.compare_digest(_mac(signing_key(request), "flash." + body), mac):
        return None
    try:
        data = json.loads(_unb64(body))
    except ValueError:
        return None
    return {"message": str(data.get("m", "")), "kind": str(data.get("k", "ok"))}


def clear_flash(response: Response) -> None:
    response.delete_cookie(FLASH_COOKIE, path="/dashboard")
