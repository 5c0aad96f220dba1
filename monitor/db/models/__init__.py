"""ORM models: one metadata for the whole schema; migrations never import these."""

from monitor.db.models.alerting import Alert, Webhook, WebhookAttempt, WebhookDelivery
from monitor.db.models.calibration import Calibration, RecalibrationJob
from monitor.db.models.dashboard import RevokedDashboardSession
from monitor.db.models.metrics import MetricSnapshot
from monitor.db.models.traffic import Feedback, Generation, Task

__all__ = [
    "Alert",
    "Calibration",
    "Feedback",
    "Generation",
    "MetricSnapshot",
    "RecalibrationJob",
    "RevokedDashboardSession",
    "Task",
    "Webhook",
    "WebhookAttempt",
    "WebhookDelivery",
]
