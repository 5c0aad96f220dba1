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

SURFACES = ("admin", "feedback", "dashboard")
REPORT_INTERVAL_S = 60.0
REPORT = (
    "refused %d request(s) with a missing or wrong %s token since the last report; "
    "the latest from %s"
)
_EXTRAS_KEY = "refused_tokens"

Schedule = Callable[[float, Callable[[], None]], None]


def _in_a_timer_thread(delay: float, callback: Callable[[], None]) -> None:
    timer = threading.Timer(delay, callback)
    timer.daemon = True  # never holds the process at exit; close() reports what is held
    timer.start()


class RefusedTokens:
    """The counter and the log's pace, one per runtime (so per app's registry).

    A refusal more than an interval after a surface's last report is reported
    at once; one sooner is held, and a report of everything held is made when
    the interval ends, so a burst followed by silence is still in the log.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        clock: Callable[[], float] = time.monotonic,
        schedule: Schedule = _in_a_timer_thread,
    ) -> None:
        self.total = Counter(
            "thermostat_auth_failures_total",
            "Requests refused for a missing or wrong token, by surface "
            "(admin API, feedback API, dashboard sign-in).",
            ["surface"],
            registry=registry,
        )
        for surface in SURFACES:  # at 0 from the start, so a rate has a series to start from
            self.total.labels(surface)
        self._clock = clock
        self._schedule = schedule
        self._lock = threading.Lock()  # token checks run in the threadpool
        self._reported_at: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._latest_client: dict[str, str | None] = {}
        self._report_due: set[str] = set()

    def refused(self, surface: str, client: str | None) -> None:
        self.total.labels(surface).inc()
        now = self._clock()
        with self._lock:
            self._held[surface] = self._held.get(surface, 0) + 1
            self._latest_client[surface] = client
            last = self._reported_at.get(surface)
            if last is not None and now - last < REPORT_INTERVAL_S:
                if surface not in self._report_due:
                    self._report_due.add(surface)
                    delay = last + REPORT_INTERVAL_S - now
                    self._schedule(delay, lambda: self._report_held(surface))
                return
            self._report(surface, now)

    def close(self) -> None:
        """Report what is held now (at shutdown), so the log misses nothing."""
        with self._lock:
            for surface in list(self._held):
                self._report(surface, self._clock())

    def _report_held(self, surface: str) -> None:
        with self._lock:
            self._report_due.discard(surface)
            if surface in self._held:  # not already reported by a later refusal
                self._report(surface, self._clock())

    def _report(self, surface: str, now: float) -> None:
        count, client = self._held.pop(surface), self._latest_client.pop(surface)
        self._reported_at[surface] = now
        log.warning(REPORT, count, surface, client or "an unknown client")


def refused_tokens(runtime: Runtime) -> RefusedTokens:
    """The runtime's RefusedTokens; the app's lifespan makes it before any request."""
    found = runtime.extras.get(_EXTRAS_KEY)
    if not isinstance(found, RefusedTokens):
        found = runtime.extras[_EXTRAS_KEY] = RefusedTokens(runtime.registry)
    return found
