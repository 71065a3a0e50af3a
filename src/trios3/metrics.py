"""What an operator can see of one proxy process, in the Prometheus text format at /metrics.

Each app owns its own registry (no process-wide default registry, so two apps in one process,
as in the tests, never mix their figures). Request counts, latencies and bytes are recorded
as requests end; the memory budget, the request counters kept by the app and the backend pool
are read when the endpoint is scraped, from the objects that own them.

With ``--workers N`` a scrape reaches whichever worker accepts it, so each worker's /metrics
answers for all of them: :meth:`Metrics.share` gives the app a :class:`FigurePool`, and a
scrape then renders the sum of every worker's :class:`Figures` (plain data: a family's kind,
help and samples) and ``trios3_workers``. How the workers' figures meet is the pool's business
(:mod:`trios3.workers`); summing and rendering them is this module's. Nothing of this runs on
the request path: figures are gathered when published and when scraped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

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

        self._shared: FigurePool | None = None

    def observe(self, operation: str, status: int | None, seconds: float) -> None:
        self.requests.labels(operation, str(status or "none")).inc()
        self.latency.labels(operation).observe(seconds)

    def figures(self) -> Figures:
        """This app's figures now, as plain data (what a worker publishes)."""
        return figures_of(self.registry)

    def share(self, pool: FigurePool) -> None:
        """From now on, :meth:`render` answers for every worker of ``pool``: set once, by the
        worker that runs this app, before it serves."""
        self._shared = pool

    def render(self) -> bytes:
        if self._shared is None:
            return generate_latest(self.registry)
        total, workers = self._shared.total(self.figures())
        return exposition(total, workers=workers)


class FigurePool(Protocol):
    """Where the workers of one ``trios3 serve --workers N`` put their figures."""

    def total(self, own: Figures) -> tuple[Figures, int]:
        """Publish ``own`` (this worker's figures now) and return the sum of all the workers'
        figures, ``own`` included, with how many workers are serving."""
        ...


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


# -- figures as plain data, to publish, sum and render -----------------------------------------

# A sample: its name (``trios3_requests_total``, ``..._bucket``) and its labels, in order.
SampleKey = tuple[str, tuple[tuple[str, str], ...]]
# Kinds whose figures keep what they counted once their worker has gone (gauges do not).
LASTING_KINDS = frozenset({"counter", "histogram"})
WORKERS_HELP = "Worker processes serving now (--workers)"
SUMMED = " (summed over the workers)"


@dataclass
class Family:
    """One metric family's figures: what a worker publishes, and what a scrape sums."""

    kind: str  # counter, gauge, histogram
    help: str
    samples: dict[SampleKey, float] = field(default_factory=dict)


Figures = dict[str, Family]  # by family name, in the order they are shown


def figures_of(registry: CollectorRegistry) -> Figures:
    """A registry's figures now. The ``_created`` timestamps are left out: a sum of them
    would mean nothing."""
    figures: Figures = {}
    for metric in registry.collect():
        family = figures.setdefault(metric.name, Family(metric.type, metric.documentation))
        for sample in metric.samples:
            if not sample.name.endswith("_created"):
                key = (sample.name, tuple(sample.labels.items()))
                family.samples[key] = family.samples.get(key, 0.0) + sample.value
    return figures


def merge(many: Iterable[Figures]) -> Figures:
    """The sum of several workers' figures, sample by sample: counters, histogram buckets,
    counts and sums, and gauges (the sum of the in-flight requests, the budget in use...).
    A sample only some have is taken as zero in the others; the families and samples come in
    the order first seen, so a histogram's buckets stay together."""
    total: Figures = {}
    for figures in many:
        for name, family in figures.items():
            into = total.setdefault(name, Family(family.kind, family.help))
            for key, value in family.samples.items():
                into.samples[key] = into.samples.get(key, 0.0) + value
    return total


def lasting(figures: Figures) -> Figures:
    """What of a worker's figures stays counted once it has gone: its counters and histograms
    (its gauges went with it)."""
    return {name: family for name, family in figures.items() if family.kind in LASTING_KINDS}


def encode(figures: Figures) -> list:
    """``figures`` as JSON-ready lists."""
    return [
        [
            name,
            family.kind,
            family.help,
            [[key[0], key[1], value] for key, value in family.samples.items()],
        ]
        for name, family in figures.items()
    ]


def decode(data: list) -> Figures:
    """The figures :func:`encode` wrote (read back from JSON)."""
    figures: Figures = {}
    for name, kind, documentation, samples in data:
        family = figures[name] = Family(kind, documentation)
        for sample, labels, value in samples:
            family.samples[(sample, tuple((k, v) for k, v in labels))] = float(value)
    return figures


def exposition(figures: Figures, *, workers: int) -> bytes:
    """The Prometheus text of the summed ``figures`` of ``workers`` workers: each family's help
    says it is a sum, and ``trios3_workers`` says over how many."""
    families = []
    for name, family in figures.items():
        metric = Metric(name, family.help + SUMMED, family.kind)
        for (sample, labels), value in family.samples.items():
            metric.add_sample(sample, dict(labels), value)
        families.append(metric)
    families.append(_gauge("trios3_workers", WORKERS_HELP, workers))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return generate_latest(registry)


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)
