"""Prometheus instruments of the request path, the recorder and the feedback API.

Built once per runtime on `runtime.registry` (never the global registry, so
several apps in one test process do not collide) and shared through
`proxy_metrics(runtime)`: the proxy route, the recorder and the feedback
service all count into the same instruments.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from monitor.runtime import Runtime

# The sidecar's own cost per request: it should stay well under a millisecond.
OVERHEAD_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005,
    0.0075, 0.01, 0.015, 0.02, 0.03, 0.05,
)  # fmt: skip
UPSTREAM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)

_EXTRAS_KEY = "proxy_metrics"

# Every reason the recorder drops records for (`Recorder._drop`). Each child is
# made at start so /metrics shows it at 0: a rate alert then tells "no drops"
# from "no data".
DROP_REASONS = ("queue_full", "spool_full", "spool_error", "invalid", "rejected")


class ProxyMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests_total = Counter(
            "thermostat_proxy_requests_total",
            "Requests proxied, by task, endpoint and the status returned to the client.",
            ["task", "endpoint", "status"],
            registry=registry,
        )
        self.upstream_latency_seconds = Histogram(
            "thermostat_upstream_latency_seconds",
            "Time from sending the upstream request to its last byte.",
            ["endpoint"],
            buckets=UPSTREAM_BUCKETS,
            registry=registry,
        )
        self.overhead_seconds = Histogram(
            "thermostat_proxy_overhead_seconds",
            "Time the sidecar adds to a request (total minus upstream).",
            ["endpoint"],
            buckets=OVERHEAD_BUCKETS,
            registry=registry,
        )
        self.queue_depth = Gauge(
            "thermostat_recorder_queue_depth",
            "Records waiting in the recorder's queue.",
            registry=registry,
        )
        self.spool_bytes = Gauge(
            "thermostat_recorder_spool_bytes",
            "Bytes in the recorder's spool (rows waiting for the database).",
            registry=registry,
        )
        self.dropped_total = Counter(
            "thermostat_recorder_dropped_total",
            "Records lost: queue full, spool full, or rows the database refused.",
            ["reason"],
            registry=registry,
        )
        for reason in DROP_REASONS:
            self.dropped_total.labels(reason=reason)
        self.written_total = Counter(
            "thermostat_recorder_written_total",
            "Rows committed to the database by the recorder's writer.",
            ["kind"],
            registry=registry,
        )
        self.spooled_total = Counter(
            "thermostat_recorder_spooled_total",
            "Rows appended to the spool while the database was unavailable.",
            ["kind"],
            registry=registry,
        )
        self.replayed_total = Counter(
            "thermostat_recorder_replayed_total",
            "Spooled rows replayed into the database.",
            ["kind"],
            registry=registry,
        )
        self.feedback_total = Counter(
            "thermostat_feedback_total",
            "Feedback requests by source and outcome (created, replayed, spooled, rejected...).",
            ["source", "outcome"],
            registry=registry,
        )
        # Children by label values, for the request path: prometheus_client's
        # labels() validates and locks on every call, about 2 us of the ~3 us
        # each count costs there. A child, once made, lives as long as its metric.
        self._children: dict[tuple[Any, ...], Any] = {}

    def child(self, metric: Counter | Histogram, *labels: str) -> Any:
        """`metric.labels(*labels)`, made once and remembered."""
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found


def proxy_metrics(runtime: Runtime) -> ProxyMetrics:
    """The runtime's ProxyMetrics, created on first use."""
    metrics = runtime.extras.get(_EXTRAS_KEY)
    if not isinstance(metrics, ProxyMetrics):
        metrics = ProxyMetrics(runtime.registry)
        runtime.extras[_EXTRAS_KEY] = metrics
    return metrics
