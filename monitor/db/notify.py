"""Change notifications between processes: Postgres LISTEN/NOTIFY, or nothing on SQLite.

- `notify(session, channel, payload)`: queue a NOTIFY inside the caller's
  transaction. Postgres delivers it at commit, so a listener never sees an
  uncommitted change; on SQLite it does nothing (SQLite has no NOTIFY).
- `can_listen(url)`: whether the database can push notifications. Where it
  cannot (SQLite), a watcher polls a cheap query instead.
- `Listener`: a dedicated autocommit psycopg connection LISTENing on one
  channel; `wait(timeout)` says whether anything arrived, and pings the
  connection when nothing did, so a dead connection raises.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from monitor.db.dialect import dialect_name

if TYPE_CHECKING:
    import psycopg


def notify(session: Session, channel: str, payload: str) -> None:
    """NOTIFY `channel` at commit (Postgres); a no-op where there is no LISTEN."""
    if dialect_name(session) == "postgresql":
        session.execute(
            text("SELECT pg_notify(:channel, :payload)"), {"channel": channel, "payload": payload}
        )


def can_listen(url: str) -> bool:
    """Postgres pushes notifications; SQLite (one host, no server) must be polled."""
    return make_url(url).get_backend_name() == "postgresql"


def listen_dsn(url: str) -> str:
    """The libpq DSN of a SQLAlchemy URL (psycopg is used directly, without a driver name)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class Listener:
    """`async with Listener(url, channel) as listener: await listener.wait(10)`."""

    def __init__(self, url: str, channel: str, *, application_name: str) -> None:
        self.url = url
        self.channel = channel
        self.application_name = application_name
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def __aenter__(self) -> Listener:
        import psycopg

        conn = await psycopg.AsyncConnection.connect(
            listen_dsn(self.url), autocommit=True, application_name=self.application_name
        )
        try:
            await conn.execute(f"LISTEN {self.channel}")
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.__aexit__(exc_type, exc, tb)

    async def wait(self, timeout: float) -> bool:
        """True if a notification arrived within `timeout`; else ping (raises if dead)."""
        conn = self._conn
        if conn is None:
            raise RuntimeError("Listener.wait outside `async with`")
        got = False
        # stop_after ends the generator cleanly (it holds the connection lock);
        # notifies arriving while the caller reacts wait in psycopg's backlog.
        async for _ in conn.notifies(timeout=timeout, stop_after=1):
            got = True
        if not got:
            await conn.execute("SELECT 1")  # a dead connection raises here
        return got
