"""Liveness, readiness and Prometheus metrics endpoints."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from monitor.db.migrate import current_revision, head_revision
from monitor.errors import first_line
from monitor.runtime import Runtime

router = APIRouter()


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


# HEAD too: load balancers and uptime checkers often probe with it (FastAPI's
# GET routes answer it 405).
PROBE_METHODS = ["GET", "HEAD"]


@router.api_route("/healthz", methods=PROBE_METHODS, include_in_schema=False)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.api_route("/readyz", methods=PROBE_METHODS, include_in_schema=False)
async def readyz(request: Request) -> JSONResponse:
    runtime = _runtime(request)
    head = runtime.extras.get("schema_head")
    if head is None:
        head = runtime.extras["schema_head"] = head_revision(runtime.engine)
    try:
        current = await asyncio.to_thread(current_revision, runtime.engine)
    except Exception as exc:
        return JSONResponse({"status": "unavailable", "reason": first_line(exc)}, status_code=503)
    if current != head:
        body = {"status": "stale_schema", "current": current, "head": head}
        return JSONResponse(body, status_code=503)
    return JSONResponse({"status": "ready", "schema": current, "role": runtime.role})


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(_runtime(request).registry), media_type=CONTENT_TYPE_LATEST)
