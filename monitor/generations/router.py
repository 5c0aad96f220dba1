"""Admin read of one generation: `GET /api/generations/{id}` (a malformed id is a 422)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter

from monitor.deps import AdminAuth, SessionDep
from monitor.generations import service
from monitor.generations.schemas import GenerationOut

router = APIRouter(prefix="/api/generations", tags=["generations"], dependencies=[AdminAuth])


@router.get("/{generation_id}", response_model=GenerationOut)
def get_generation(generation_id: uuid.UUID, session: SessionDep) -> GenerationOut:
    return service.get_generation(session, generation_id)
