"""The reference model server's admin routes: its per-task calibration table.

Thermostat activates a fitted temperature with ``PUT /admin/calibration``
(``monitor/serving/model_push.py``, when ``THERMOSTAT_MODEL_ADMIN_URL`` is
set); ``GET`` reads the table back, which is how an operator or a test checks
what the server applies. The table itself, and when it touches sampling, is
``calibration.py``'s business; these routes only validate and swap it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import ValidationError

from .calibration import CalibrationStore, CalibrationTable, TaskCalibrationUpdate
from .responses import error_response, json_response, validation_message


def install_admin_routes(app: FastAPI) -> None:
    @app.get("/admin/calibration")
    async def get_calibration(request: Request) -> Response:
        store: CalibrationStore = request.app.state.calibration
        return json_response(store.as_json(store.snapshot()))

    @app.put("/admin/calibration")
    async def put_calibration(request: Request) -> Response:
        store: CalibrationStore = request.app.state.calibration
        try:
            body = await request.json()
        except ValueError:
            return error_response(422, "body must be a JSON object", code="invalid_json")
        try:
            table: Mapping[str, Any]
            if isinstance(body, dict) and "tasks" in body:
                table = store.replace(CalibrationTable.model_validate(body).tasks)
            else:
                update = TaskCalibrationUpdate.model_validate(body)
                table = store.set_task(update.task, update.entry())
        except ValidationError as exc:
            message, param = validation_message(list(exc.errors()))
            return error_response(422, message, param=param, code="invalid_value")
        return json_response(store.as_json(table))
