"""What an operator can see of one proxy process, in the Prometheus text format at /metrics.

Each app owns its own registry (no process-wide default registry, so two apps in one process,
as in the tests, never mix their figures). Request counts, latencies and bytes are recorded
as requests end; the memory budget, the request counters kept by the app and the backend pool
are read when the endpoint is scraped, from the objects that own them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from trios3.budget import BudgetStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


@dataclass
class Counts:
    """Counters the app keeps as requests run (read at scrape time)."""

    in_flight: int = 0
    requests: int = 0
    refused_busy: int = 0
    disconnects: int = 0
    shutdown_cancellations: int = 0
    backend_failures: int = 0
    tamper_failures: int = 0
    auth_failures: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0


class Metrics:
    """One app's metrics: what is recorded per request, and what is read on each scrape."""

    def __init__(
        self,
        counts: Counts,
        budget: BudgetStats,
        pool_connections: Callable[[], int | None],
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "trios3_requests",
            "S3 requests answered, by operation and status",
            ["operation", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "trios3_request_duration_seconds",
            "Time from a request's arrival to its last byte, by operation",
            ["operation"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_Snapshot(counts, budget, pool_connections))

    def observe(self, operation: str, status: int | None, seconds: float) -> None:
        self.requests.labels(operation, str(status or "none")).inc()
        self.latency.labels(operation).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Snapshot(Collector):
    def __init__(
        self, counts: Counts, budget: BudgetStats, pool_connections: Callable[[], int | None]
    ) -> None:
        self._counts = counts
        self._budget = budget
        self._pool = pool_connections

    def collect(self) -> Iterator[Metric]:
        c, b = self._counts, self._budget
        yield _gauge("trios3_requests_in_flight", "Requests being served now", c.in_flight)
        yield _counter(
            "trios3_refused_busy", "Requests refused with 503 at --max-requests", c.refused_busy
        )
        yield _counter("trios3_received_bytes", "Request body bytes received", c.bytes_received)
        yield _counter("trios3_sent_bytes", "Response body bytes sent", c.bytes_sent)
        cancelled = CounterMetricFamily(
            "trios3_cancellations", "Requests ended before their response did", labels=["cause"]
        )
        cancelled.add_metric(["client_disconnect"], c.disconnects)
        cancelled.add_metric(["server_shutdown"], c.shutdown_cancellations)
        cancelled.add_metric(["backend_failure"], c.backend_failures)
        yield cancelled
        yield _counter(
            "trios3_authentication_failures",
            "Requests refused for their credentials or signature",
            c.auth_failures,
        )
        yield _counter(
            "trios3_tamper_failures",
            "Stored objects that failed authentication (tampering or corruption)",
            c.tamper_failures,
        )
        yield _counter(
            "trios3_backend_errors", "Backend requests that failed in transport", c.backend_failures
        )
        yield _gauge("trios3_budget_capacity_bytes", "The memory budget", b.capacity)
        yield _gauge("trios3_budget_in_use_bytes", "Memory budget leased now", b.in_use)
        yield _gauge("trios3_budget_waiters", "Requests queued for the memory budget", b.waiting)
        yield _counter("trios3_budget_admissions", "Leases granted", b.admitted)
        yield _counter(
            "trios3_budget_rejections", "Requests answered 503 SlowDown after waiting", b.rejected
        )
        yield _counter(
            "trios3_budget_cancelled_waits",
            "Requests that ended while queued for the budget",
            b.cancelled_while_waiting,
        )
        yield _counter(
            "trios3_budget_wait_seconds", "Total time requests spent queued", b.wait_seconds
        )
        pool = self._pool()
        if pool is not None:
            yield _gauge(
                "trios3_backend_pool_connections", "Connections held by the backend pool", pool
            )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)
