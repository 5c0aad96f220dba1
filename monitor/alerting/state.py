"""The alert state machine per (rule, task), persisted as episodes in `alerts`.

    (none) --breach--> pending --breach x for--> firing --ok--> resolved
    pending --ok or insufficient--> dropped (row deleted; nobody was told)
    firing --insufficient--> firing (unchanged)

One open episode per rule and task (a partial unique index). Notifications
go through the webhook outbox in the same transaction as the state change,
so `alert.firing` is emitted exactly once per episode and `alert.resolved`
once. Re-notification while an episode keeps firing is opt-in: every
`alert_renotify_s` seconds when set, never by default (0).

Insufficient data: a pending episode is dropped (the breach streak is broken
and nobody was notified), a firing one stays firing until enough data says
the task is fine: a quiet night with no feedback is not a recovery.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy.orm import Session

from monitor.alerting import repository
from monitor.alerting.events import emit_event
from monitor.db.models import Alert
from monitor.db.models.enums import AlertState
from monitor.evaluation.rules import RuleOutcome

log = logging.getLogger(__name__)

Change = Literal["pending", "firing", "renotified", "resolved", "dropped", "unchanged"]


@dataclass(frozen=True)
class Transition:
    rule: str
    task: str
    change: Change
    state: str | None
    alert_id: int | None


def alert_data(alert: Alert, description: str = "") -> dict[str, Any]:
    """The webhook `data` of an alert event (CONTRACT.md: at least these names)."""
    return {
        "alert_id": alert.id,
        "rule": alert.rule,
        "task": alert.task,
        "state": alert.state,
        "severity": alert.severity,
        "value": alert.value,
        "threshold": alert.threshold,
        "samples": alert.samples,
        "started_at": alert.started_at,
        "fired_at": alert.fired_at,
        "resolved_at": alert.resolved_at,
        "description": description,
    }


def apply_outcomes(
    session: Session, outcomes: list[RuleOutcome], now: datetime, renotify_s: float
) -> list[Transition]:
    """Advance every (rule, task) episode by one evaluation; flush, never commit."""
    if not outcomes:
        return []
    open_by_rule = repository.open_alerts(session, outcomes[0].task)
    return [_step(session, o, open_by_rule.get(o.rule.name), now, renotify_s) for o in outcomes]


def _record(alert: Alert, outcome: RuleOutcome, now: datetime) -> None:
    alert.value = outcome.value
    alert.threshold = outcome.threshold
    alert.samples = outcome.samples
    alert.updated_at = now


def _fire(session: Session, alert: Alert, outcome: RuleOutcome, now: datetime) -> None:
    alert.state = AlertState.firing.value
    alert.fired_at = now
    alert.last_notified_at = now
    session.flush()
    emit_event(session, "alert.firing", alert_data(alert, outcome.rule.description))
    log.warning(
        "alert firing: %s on %s (value %s, threshold %s)",
        alert.rule,
        alert.task,
        alert.value,
        alert.threshold,
    )


def _step(
    session: Session, outcome: RuleOutcome, alert: Alert | None, now: datetime, renotify_s: float
) -> Transition:
    rule, task = outcome.rule, outcome.task

    def result(change: Change, row: Alert | None) -> Transition:
        return Transition(
            rule.name, task, change, row.state if row else None, row.id if row else None
        )

    firing = alert is not None and alert.state == AlertState.firing.value
    if outcome.verdict == "breach":
        if alert is None:
            fresh = Alert(
                rule=rule.name,
                task=task,
                state=AlertState.pending.value,
                severity=rule.severity,
                consecutive=1,
                started_at=now,
                updated_at=now,
            )
            _record(fresh, outcome, now)
            inserted = repository.insert_alert(session, fresh)
            if inserted is None:  # another evaluator opened it concurrently
                return result("unchanged", None)
            if fresh.consecutive >= rule.for_:
                _fire(session, fresh, outcome, now)
                return result("firing", fresh)
            return result("pending", fresh)
        _record(alert, outcome, now)
        alert.consecutive += 1
        if not firing:
            if alert.consecutive >= rule.for_:
                _fire(session, alert, outcome, now)
                return result("firing", alert)
            session.flush()
            return result("pending", alert)
        last = alert.last_notified_at or alert.fired_at or alert.started_at
        if renotify_s > 0 and now - last >= timedelta(seconds=renotify_s):
            alert.last_notified_at = now
            session.flush()
            data = {**alert_data(alert, rule.description), "renotification": True}
            emit_event(session, "alert.firing", data)
            return result("renotified", alert)
        session.flush()
        return result("unchanged", alert)

    if alert is None:
        return result("unchanged", None)
    if not firing:
        # A pending streak broken by a healthy or an inconclusive evaluation.
        alert_id = alert.id
        repository.delete_alert(session, alert)
        return Transition(rule.name, task, "dropped", None, alert_id)
    if outcome.verdict == "insufficient":
        return result("unchanged", alert)
    _record(alert, outcome, now)
    alert.state = AlertState.resolved.value
    alert.resolved_at = now
    alert.consecutive = 0
    session.flush()
    emit_event(session, "alert.resolved", alert_data(alert, rule.description))
    log.info("alert resolved: %s on %s (value %s)", alert.rule, alert.task, alert.value)
    return result("resolved", alert)
