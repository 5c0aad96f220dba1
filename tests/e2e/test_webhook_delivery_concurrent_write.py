"""A webhook delivered while another connection writes is recorded once and not re-sent.

Found by the closed-loop test on SQLite: `deliver_one` keeps its database
transaction open across the outbound POST. With deferred transactions
(`BEGIN`), any commit by another connection during the POST (recorder,
feedback, worker: constant in the embedded `all` role) makes the later write
of the attempt fail at once with "database is locked" (a stale read snapshot
cannot be upgraded; the busy timeout does not apply): the attempt is lost, the
delivery stays pending, and the same event is sent again. With `BEGIN
IMMEDIATE` the POST holds SQLite's write lock instead, so every other writer
waits for the webhook receiver, and a receiver that writes back to the
sidecar while handling the event deadlocks until the webhook timeout: the
delivery is recorded as failed and retried. Here the receiver commits a write
while it handles the POST, which makes either race deterministic. Postgres
passes; SQLite fails until the POST runs outside a transaction.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from monitor.alerting.events import emit_event
from monitor.alerting.service import close_shared_client
from monitor.db.models import Webhook, WebhookAttempt, WebhookDelivery
from monitor.db.session import session_scope
from monitor.runtime import open_runtime
from monitor.scheduler.jobs import deliver_due
from monitor.settings import Settings
from monitor.tasks.repository import ensure_tasks
from tests.e2e.support import webhook_receiver

pytestmark = pytest.mark.timeout(60)

SECRET = "whsec_" + base64.b64encode(b"concurrent-write-secret-012345").decode()


def test_delivery_during_a_concurrent_commit_is_recorded_and_sent_once(
    make_settings: Callable[..., Settings], sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    runtime = open_runtime(make_settings(webhooks={"timeout_s": 2}), "scheduler")
    writes = iter(range(1000))

    def commit_elsewhere() -> None:
        with session_scope(sessions) as session:
            ensure_tasks(session, [f"other-{next(writes)}"])

    try:
        with webhook_receiver(SECRET, on_request=commit_elsewhere) as receiver:
            with session_scope(sessions) as session:
                session.add(Webhook(url=receiver.url, secret=SECRET, events=["alert.firing"]))
                session.flush()
                emit_event(session, "alert.firing", {"rule": "r", "task": "t"})

            first = deliver_due(runtime)
            second = deliver_due(runtime)

            assert [r.delivered for r in first] == [True]
            assert second == []
            assert len(receiver.events) == 1
            assert receiver.rejected == []
        with session_scope(sessions) as session:
            delivery = session.scalars(select(WebhookDelivery)).one()
            attempts = session.scalars(select(WebhookAttempt)).all()
            assert (delivery.status, delivery.attempts) == ("delivered", 1)
            assert [a.status_code for a in attempts] == [204]
    finally:
        close_shared_client(runtime)
        runtime.engine.dispose()
