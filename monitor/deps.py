"""FastAPI dependencies shared by every feature router.

The request owns the transaction: `db_session` commits when the handler
returns and rolls back when it raises; services only flush.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from pydantic import SecretStr
from sqlalchemy.orm import Session

from monitor.auth import check_token, client_host
from monitor.db.session import session_scope
from monitor.errors import UnauthorizedError
from monitor.refused_tokens import refused_tokens
from monitor.runtime import Runtime
from monitor.settings import Settings


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def db_session(runtime: Annotated[Runtime, Depends(get_runtime)]) -> Iterator[Session]:
    with session_scope(runtime.sessions) as session:
        yield session


def require_admin(request: Request) -> None:
    _require_token(request, get_settings(request).admin_token, "admin")


def require_feedback(request: Request) -> None:
    _require_token(request, get_settings(request).feedback_token, "feedback")


def _require_token(request: Request, expected: SecretStr | None, surface: str) -> None:
    try:
        check_token(request, expected, surface)
    except UnauthorizedError:
        refused_tokens(get_runtime(request)).refused(surface, client_host(request))
        raise


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
# scope="function": commit before the response is sent, so a 2xx means durable.
SessionDep = Annotated[Session, Depends(db_session, scope="function")]
AdminAuth = Depends(require_admin)
FeedbackAuth = Depends(require_feedback)
