"""Requests refused for a missing or wrong token: counted, and reported in the log.

There is no lockout, on purpose. The contract answers a wrong token with 401,
never 429; the tokens are long random secrets that guessing cannot reach; and
a lockout keyed on the client's address would let anyone behind the same NAT
or ingress lock the operators out. What an operator needs is to *see*
guessing: every refusal counts in `thermostat_auth_failures_total{surface}`
(alert on its rate), and the log says so at once, then at most once a minute
per surface with the count since, so a flood of guesses cannot flood the log.
The log names the surface and the client's address, never what was sent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter

from monitor.runtime import Runtime

log = logging.getLogger(__name__)

REPORT_INTERVAL_S = 60.0
_EXTRAS_KEY = "refused_tokens"
_create_lock = threading.Lock()


class RefusedTokens:
    """The counter and the log's pace, one per runtime (so per app's registry)."""

    def __init__(
        self, registry: CollectorRegistry, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.total = Counter(
            "thermostat_auth_failures_total",
            "Requests refused for a missing or wrong token, by surface "
            "(admin API, feedback API, dashboard sign-in).",
            ["surface"],
            registry=registry,
        )
        self._clock = clock
        self._lock = threading.Lock()  # token checks run in the threadpool
        self._reported_at: dict[str, float] = {}
        self._unreported: dict[str, int] = {}

    def refused(self, surface: str, client: str | None) -> None:
        self.total.labels(surface).inc()
        now = self._clock()
        with self._lock:
            count = self._unreported.get(surface, 0) + 1
            last = self._reported_at.get(surface)
            if last is not None and now - last < REPORT_INTERVAL_S:
                self._unreported[surface] = count
                return
            self._unreported[surface] = 0
            self._reported_at[surface] = now
        log.warning(
            "refused %d request(s) with a missing or wrong %s token since the last report; "
            "the latest from %s",
            count,
            surface,
            client or "an unknown client",
        )


def refused_tokens(runtime: Runtime) -> RefusedTokens:
    """The runtime's RefusedTokens, created on first use."""
    with _create_lock:  # two first refusals at once must not register the metric twice
        found = runtime.extras.get(_EXTRAS_KEY)
        if not isinstance(found, RefusedTokens):
            found = runtime.extras[_EXTRAS_KEY] = RefusedTokens(runtime.registry)
        return found
