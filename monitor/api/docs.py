"""`/api/openapi.json` and `/api/docs`, for the admin only.

FastAPI serves both without auth when given `docs_url`/`openapi_url`; the
contract puts all of `/api/*` behind the admin token, so the app turns those
off and serves them here behind a dependency (FastAPI's documented recipe).
A signed-in dashboard session opens them too: an operator signed in to the
dashboard can open `/api/docs` in the browser, whose Swagger page fetches the
schema with the same (same-site) cookie. Anything else gets the API's 401.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from monitor.dashboard.session import admin_bearer, signed_in
from monitor.deps import SessionDep, require_admin

OPENAPI_PATH = "/api/openapi.json"


def require_admin_or_dashboard(request: Request, db: SessionDep) -> None:
    """The admin bearer token or a dashboard session cookie, else the API's usual 401.

    `require_admin` decides the rest: loopback clients with no token configured
    pass, as on every `/api/*` route; anything else is counted and refused.
    """
    if admin_bearer(request) or signed_in(request, db) is not None:
        return
    require_admin(request)


router = APIRouter(
    prefix="/api", include_in_schema=False, dependencies=[Depends(require_admin_or_dashboard)]
)


@router.get("/openapi.json")
def openapi(request: Request) -> JSONResponse:
    schema = request.app.openapi()
    root_path = request.scope.get("root_path", "").rstrip("/")
    servers = schema.get("servers", [])
    # Behind a proxy's root path, as FastAPI's own handler does.
    if (
        root_path
        and request.app.root_path_in_servers
        and root_path not in {s.get("url") for s in servers}
    ):
        schema = {**schema, "servers": [{"url": root_path}, *servers]}
    return JSONResponse(schema)


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    root_path = request.scope.get("root_path", "").rstrip("/")
    return get_swagger_ui_html(
        openapi_url=root_path + OPENAPI_PATH, title=f"{request.app.title} - Swagger UI"
    )
