"""Reset the demo's own rows on a Postgres database (`thermostat demo --postgres URL`).

Only the demo's tasks, their rows, and webhooks pointing at earlier demo
receivers are removed; anything else in the database is left alone.
"""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.exc import SQLAlchemyError

from monitor.db.engine import build_engine
from monitor.db.migrate import current_revision, upgrade
from monitor.db.models import Feedback, Generation, Task, Webhook
from monitor.errors import DatabaseError, first_line, redact_url


def reset_postgres(url: str, tasks: list[str]) -> None:
    """Migrate a fresh database, then delete the demo's rows; one-line DatabaseError on failure."""
    engine = build_engine(url, application_name="thermostat-demo")
    try:
        if current_revision(engine) is None:
            upgrade(engine)
        with engine.begin() as conn:
            ids = select(Generation.id).where(Generation.task.in_(tasks))
            conn.execute(delete(Feedback).where(Feedback.generation_id.in_(ids)))
            conn.execute(delete(Task).where(Task.name.in_(tasks)))  # cascades
            conn.execute(delete(Webhook).where(Webhook.url.like("%/demo-hooks")))
    except SQLAlchemyError as exc:  # unreachable, refused, no such database: say so
        raise DatabaseError(f"demo database {redact_url(url)}: {first_line(exc)}") from None
    finally:
        engine.dispose()
