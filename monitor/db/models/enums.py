"""Enumerations stored as plain strings (portable, and readable in SQL)."""

from enum import StrEnum


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    rejected = "rejected"
    failed = "failed"


class JobTrigger(StrEnum):
    threshold = "threshold"
    cron = "cron"
    manual = "manual"


class CalibrationStatus(StrEnum):
    candidate = "candidate"
    active = "active"
    retired = "retired"
    rejected = "rejected"


class AlertState(StrEnum):
    pending = "pending"
    firing = "firing"
    resolved = "resolved"


class SnapshotStatus(StrEnum):
    ok = "ok"
    breach = "breach"
    insufficient_data = "insufficient_data"


class DeliveryStatus(StrEnum):
    pending = "pending"
    delivered = "delivered"
    failed = "failed"


OPEN_JOB_STATUSES = (JobStatus.queued.value, JobStatus.running.value)
OPEN_ALERT_STATES = (AlertState.pending.value, AlertState.firing.value)
