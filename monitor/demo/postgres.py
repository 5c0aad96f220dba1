"""Reset the demo's own rows on a Postgres database (`thermostat demo --postgres URL`).

Only the demo's tasks, their rows, and webhooks pointing at earlier demo
receivers are removed; anything else in the database is left alone.
"""

from __future__ import annotations

from sqlalchemy import delete, select

from monitor.db.engine import build_engine
from monitor.db.migrate import current_revision, upgrade
from monitor.db.models import Feedback, Generation, Task, Webhook


def reset_postgres(url: str, tasks: list[str]) -> None:
    engine = build_engine(url, application_name="thermostat-demo")
    try:
        if current_revision(engine) is None:
            upgrade(engine)
        with engine.begin() as conn:
            ids = select(Generation.id).where(Generation.task.in_(tasks))
            conn.execute(delete(Feedback).where(Feedback.generation_id.in_(ids)))
            conn.execute(delete(Task).where(Task.name.in_(tasks)))  # cascades
            conn.execute(delete(Webhook).where(Webhook.url.like("%/demo-hooks")))
    finally:
        engine.dispose()
