"""Templates, formatting filters and the route class that turns auth failures into pages.

The Jinja environment is built on first use (nothing at import time) and
autoescapes everything; charts arrive as Markup already escaped by `charts`.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from monitor.dashboard.session import (
    CsrfRejected,
    DashboardSession,
    LoginRequired,
    clear_flash,
    flash,
    login_redirect,
    pop_flash,
    signing_key,
)
from monitor.errors import ThermostatError, redact_endpoint

HERE = Path(__file__).parent
DASH = "\u2013"  # shown for missing values
# Inline SVG is markup, not a resource, so a strict policy costs nothing.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def when(value: datetime | None) -> Markup:
    """A <time> element that never wraps inside a table cell (dates hold hyphens)."""
    if value is None:
        return Markup(DASH)
    utc = value.astimezone(UTC)
    text = utc.strftime("%Y-%m-%d %H:%M UTC")
    return Markup('<time class="ts" datetime="{}">{}</time>').format(utc.isoformat(), text)


def ago(value: datetime | None, now: datetime | None = None) -> str:
    if value is None:
        return "never"
    seconds = ((now or datetime.now(UTC)) - value).total_seconds()
    if seconds < 0:
        return "in the future"
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return "just now"


def short_id(value: object) -> str:
    """UUIDv7s share their leading (time) digits; the random tail tells rows apart."""
    text = str(value)
    return "\u2026" + text[-12:]


def num(value: float | None, digits: int = 3) -> str:
    return DASH if value is None else f"{value:.{digits}f}"


def pct(value: float | None, digits: int = 1) -> str:
    return DASH if value is None else f"{value * 100:.{digits}f}%"


@lru_cache(maxsize=1)
def templates() -> Jinja2Templates:
    env = Jinja2Templates(directory=str(HERE / "templates"))
    env.env.filters.update(
        when=when, ago=ago, num=num, pct=pct, short_id=short_id, endpoint=redact_endpoint
    )
    env.env.trim_blocks = True
    env.env.lstrip_blocks = True
    return env


def render(
    request: Request,
    name: str,
    context: dict[str, Any],
    session: DashboardSession | None,
    status_code: int = 200,
) -> HTMLResponse:
    message = pop_flash(request)
    ctx = {"session": session, "flash": message, "now": datetime.now(UTC), **context}
    response = templates().TemplateResponse(request, name, ctx, status_code=status_code)
    if message is not None:
        clear_flash(response)
    response.headers.update(SECURITY_HEADERS)
    return response


def redirect(request: Request, url: str, message: str | None = None, kind: str = "ok") -> Response:
    """Redirect after POST (303), carrying a flash message to the next page."""
    response = RedirectResponse(url, status_code=303)
    if message:
        flash(response, signing_key(request), message, kind)
    return response


def error_page(request: Request, status: int, message: str) -> HTMLResponse:
    return render(request, "error.html", {"status": status, "message": message}, None, status)


class DashboardRoute(APIRoute):
    """Login redirects (303), CSRF refusals (403) and expected errors as HTML, not JSON."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        original = super().get_route_handler()

        async def handler(request: Request) -> Response:
            try:
                return await original(request)
            except LoginRequired as exc:
                return login_redirect(exc.next_path)
            except CsrfRejected:
                return error_page(
                    request,
                    403,
                    "This form has expired or did not come from the dashboard. "
                    "Go back, reload the page and try again.",
                )
            except ThermostatError as exc:
                return error_page(request, exc.status_code, exc.message)

        return handler
