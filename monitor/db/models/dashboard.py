"""Dashboard sign-outs: the session ids that were signed out before their cookie expired.

The session cookie is signed, not stored, so clearing it in the browser that
signs out does not end a copy of it held elsewhere. A row here ends it in
every api process; rows are kept until the cookie would have expired anyway.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from monitor.db.base import Base
from monitor.db.types import UTCDateTime


class RevokedDashboardSession(Base):
    __tablename__ = "dashboard_revoked_sessions"

    session_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
