"""HTTP edge of the feedback API: `POST /v1/feedback` and `POST /v1/feedback/batch`.

The token is checked before the body is read; the write runs in a worker
thread (synchronous SQLAlchemy, fsync on the spool path) so the event loop
that serves the proxy never waits on it.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from monitor.deps import FeedbackAuth, get_runtime
from monitor.errors import ThermostatError
from monitor.feedback.schemas import (
    BatchIn,
    BatchOut,
    BatchResult,
    FeedbackIn,
    FeedbackOut,
    ItemError,
    parse_batch,
    parse_item,
    parse_json,
)
from monitor.feedback.service import FeedbackService, Item, Outcome, other_processes_wait_s
from monitor.http_errors import error_response
from monitor.proxy.metrics import proxy_metrics
from monitor.proxy.recorder import get_recorder

router = APIRouter(prefix="/v1/feedback", tags=["feedback"], dependencies=[FeedbackAuth])


def _body_schema(model: type[Any]) -> dict[str, Any]:
    schema = model.model_json_schema()
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _service(request: Request) -> FeedbackService:
    runtime = get_runtime(request)
    return FeedbackService(
        runtime.sessions,
        get_recorder(runtime),
        proxy_metrics(runtime),
        other_processes_wait_s=other_processes_wait_s(runtime.settings.recorder),
    )


async def _submit(request: Request, items: list[Item]) -> list[Outcome]:
    service = _service(request)
    await service.wait_for_other_processes(items)
    return await run_in_threadpool(service.submit, items)


@router.post(
    "",
    status_code=201,
    response_model=FeedbackOut,
    openapi_extra=_body_schema(FeedbackIn),
    responses={200: {"model": FeedbackOut, "description": "idempotent replay"}},
)
async def post_feedback(request: Request) -> JSONResponse:
    item = parse_item(parse_json(await request.body()))
    [outcome] = await _submit(request, [item])
    if outcome.error is not None:
        error = outcome.error
        return error_response(error.status_code, error.message, error.code, error.field)
    assert outcome.feedback is not None
    return JSONResponse(outcome.feedback.model_dump(mode="json"), status_code=outcome.status)


@router.post(
    "/batch", status_code=207, response_model=BatchOut, openapi_extra=_body_schema(BatchIn)
)
async def post_feedback_batch(request: Request) -> JSONResponse:
    raw_items = parse_batch(parse_json(await request.body()))
    items: list[Item] = []
    for index, data in enumerate(raw_items):
        try:
            items.append(parse_item(data, prefix=f"items.{index}"))
        except ThermostatError as exc:  # invalid (422), or an id that is no UUID (404)
            items.append(exc)
    outcomes = await _submit(request, items)
    results = []
    for index, outcome in enumerate(outcomes):
        result = BatchResult(index=index, status=outcome.status)
        if outcome.feedback is not None:
            result.id = outcome.feedback.id
            result.generation_id = outcome.feedback.generation_id
        if outcome.error is not None:
            error = outcome.error
            result.error = ItemError(message=error.message, code=error.code, param=error.field)
        results.append(result)
    return JSONResponse(BatchOut(items=results).model_dump(mode="json"), status_code=207)
