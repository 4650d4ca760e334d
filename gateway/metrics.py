"""What Prometheus sees: the gateway's collectors, bound to an injected registry.

Every label value comes from a bounded set: configured callers and components, resource names from the
ZGW route templates (`routing.KNOWN_RESOURCES`, else 'other'), HTTP methods, status codes, and the fixed
reason lists below. Never a path, an id, a user, a query string, a secret or a token.

The collectors touched on every request are plain-Python counters, gauges and histograms exposed through
one custom collector: prometheus_client's own children take a lock and validate on each call, which cost
about a tenth of the proxy's throughput, and the gateway updates metrics from one event loop thread only.
Their exposition is sample for sample what prometheus_client's Counter/Gauge/Histogram would write.
Label children are cached per label set so the hot path pays one dict lookup per collector.
"""

from __future__ import annotations

import platform
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Info
from prometheus_client import metrics as _client_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from . import __version__

PREFIX = "zgw_gateway"
# From 1 ms to 60 s: ZGW calls range from cached catalogus reads to multi-GB document transfers.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
METHODS = frozenset({"GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"})
FAILURE_REASONS = ("connect", "timeout", "reset", "dns", "pool", "circuit_open", "tls", "overloaded")
# The problem codes a ZGW server answers 403 with (ZGW.md section 3); anything else counts as 'other'.
FORBIDDEN_CODES = frozenset(
    {
        "permission_denied",
        "invalid-jwt-signature",
        "invalid-client-identifier",
        "missing-client-identifier",
        "jwt-expired",
        "jwt-expiredsignatureerror",
        "jwt-immaturesignatureerror",
        "jwt-missing-iat-claim",
        "jwt-decode-error",
        "jwt-invalidalgorithmerror",
        "jwt-invalidaudienceerror",
    }
)
INF = float("inf")

_go_float: Callable[[float], str] = floatToGoString


def _created_series() -> bool:
    # prometheus_client's switch (PROMETHEUS_DISABLE_CREATED_SERIES, disable_created_metrics()), read per scrape
    # so these series follow it exactly as the library's own counters and histograms do.
    return bool(getattr(_client_metrics, "_use_created", True))


class CounterChild:
    """One label set of a counter."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self.value += amount


class GaugeChild:
    """One label set of a gauge."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)


class HistogramChild:
    """One label set of a histogram: per-bucket counts (not cumulative) and the sum; the count is their total."""

    __slots__ = ("bounds", "buckets", "created", "sum")

    def __init__(self, bounds: list[float]) -> None:
        self.bounds = bounds
        self.buckets = [0] * len(bounds)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float, _bisect: Callable[[list[float], float], int] = bisect_left) -> None:
        # The first bound >= amount, as prometheus_client's `amount <= bound` scan picks. `_bisect` is a default
        # argument so the call skips a global lookup.
        self.buckets[_bisect(self.bounds, amount)] += 1
        self.sum += amount


Child = TypeVar("Child", CounterChild, GaugeChild, HistogramChild)
Fast = TypeVar("Fast", bound="_Fast[Any]")


class _Fast(Generic[Child]):
    """A labelled metric whose children are plain objects; `labels()` returns the cached child."""

    def __init__(self, name: str, documentation: str, labelnames: list[str] | tuple[str, ...]) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        # Keyed by the label values as given; `Metrics.child` reads it directly.
        self.children: dict[tuple[str, ...], Child] = {}

    def _new_child(self) -> Child:
        raise NotImplementedError

    def labels(self, *labelvalues: str, **labelkwargs: str) -> Child:
        found = self.children.get(labelvalues)
        if found is not None and not labelkwargs:
            return found
        if labelvalues and labelkwargs:
            raise ValueError("Can't pass both *args and **kwargs")
        if labelkwargs:
            if sorted(labelkwargs) != sorted(self._labelnames):
                raise ValueError("Incorrect label names")
            values = tuple(str(labelkwargs[name]) for name in self._labelnames)
        else:
            if len(labelvalues) != len(self._labelnames):
                raise ValueError("Incorrect label count")
            values = tuple(str(value) for value in labelvalues)
        found = self.children.get(values)
        if found is None:
            found = self.children[values] = self._new_child()
        return found

    def _family(self) -> Metric:
        raise NotImplementedError

    def family(self, created: bool) -> Metric:
        """The metric family with one sample group per child, in the order the children were created."""
        raise NotImplementedError

    def collect(self) -> list[Metric]:
        return [self.family(_created_series())]

    def describe(self) -> list[Metric]:
        return [self._family()]


class FastCounter(_Fast[CounterChild]):
    """Exported like prometheus_client's Counter: `_total`, and `_created` when the library emits it."""

    def _new_child(self) -> CounterChild:
        return CounterChild()

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def family(self, created: bool) -> Metric:
        family = self._family()
        for values, child in list(self.children.items()):
            family.add_metric(values, child.value, created=child.created if created else None)
        return family


class FastGauge(_Fast[GaugeChild]):
    """Exported like prometheus_client's Gauge."""

    def _new_child(self) -> GaugeChild:
        return GaugeChild()

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def family(self, created: bool) -> Metric:
        family = self._family()
        for values, child in list(self.children.items()):
            family.add_metric(values, child.value)
        return family


class FastHistogram(_Fast[HistogramChild]):
    """Exported like prometheus_client's Histogram: cumulative buckets up to +Inf, `_count`, `_sum`, `_created`."""

    def __init__(
        self, name: str, documentation: str, labelnames: list[str] | tuple[str, ...], buckets: tuple[float, ...]
    ) -> None:
        super().__init__(name, documentation, labelnames)
        bounds = [float(b) for b in buckets]
        if bounds != sorted(bounds):
            raise ValueError("Buckets not in sorted order")
        if bounds[-1] != INF:
            bounds.append(INF)
        self._upper_bounds = bounds
        self._le = [_go_float(b) for b in bounds]

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self._upper_bounds)

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def family(self, created: bool) -> Metric:
        family = self._family()
        for values, child in list(self.children.items()):
            cumulative: list[tuple[str, float]] = []
            acc = 0.0
            for le, count in zip(self._le, list(child.buckets), strict=True):
                acc += count
                cumulative.append((le, acc))
            family.add_metric(values, cumulative, child.sum)
            if created:
                labels = dict(zip(self._labelnames, values, strict=True))
                family.samples.append(Sample(f"{self._name}_created", labels, child.created, None))
        return family


class FastCollector:
    """The registry's view of the fast metrics: one family each, in the order they were added."""

    def __init__(self) -> None:
        self.metrics: list[_Fast[Any]] = []

    def collect(self) -> Iterator[Metric]:
        created = _created_series()
        for metric in self.metrics:
            yield metric.family(created)

    def describe(self) -> Iterator[Metric]:
        # Lets the registry refuse a second collector exporting the same names.
        for metric in self.metrics:
            yield from metric.describe()


class Metrics:
    """The gateway's collectors, registered in `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        r = registry
        fast = FastCollector()
        self._fast = fast
        self.requests = self._add(
            fast,
            FastCounter(
                f"{PREFIX}_requests",
                "Requests handled, by caller, component, method, status code, resource and who answered.",
                ["caller", "component", "method", "code", "resource", "source"],
            ),
        )
        self.request_duration = self._add(
            fast,
            FastHistogram(
                f"{PREFIX}_request_duration_seconds",
                "Time from request start to the last response byte, as the caller sees it.",
                ["caller", "component", "method", "resource"],
                buckets=LATENCY_BUCKETS,
            ),
        )
        self.upstream_duration = self._add(
            fast,
            FastHistogram(
                f"{PREFIX}_upstream_duration_seconds",
                "Time from sending the request upstream until the upstream's response headers arrived.",
                ["component"],
                buckets=LATENCY_BUCKETS,
            ),
        )
        self.overhead = self._add(
            fast,
            FastHistogram(
                f"{PREFIX}_overhead_seconds",
                "Time the gateway itself added before forwarding (identify, token, headers).",
                ["component"],
                buckets=OVERHEAD_BUCKETS,
            ),
        )
        self.request_bytes = self._add(
            fast,
            FastCounter(
                f"{PREFIX}_request_bytes", "Request body bytes received from callers.", ["caller", "component"]
            ),
        )
        self.response_bytes = self._add(
            fast,
            FastCounter(f"{PREFIX}_response_bytes", "Response body bytes sent to callers.", ["caller", "component"]),
        )
        self.in_flight = self._add(
            fast, FastGauge(f"{PREFIX}_in_flight_requests", "Requests being handled right now.", ["component"])
        )
        self.upstream_failures = self._add(
            fast,
            FastCounter(
                f"{PREFIX}_upstream_failures",
                "Requests that got no usable upstream answer, by reason.",
                ["component", "reason"],
            ),
        )
        self.aborted = self._add(
            fast,
            FastCounter(
                f"{PREFIX}_aborted_requests",
                "Transfers cut mid-body, by reason (body_too_large, body_timeout, upstream_reset, client_gone).",
                ["component", "reason"],
            ),
        )
        self.retries = self._add(
            fast,
            FastCounter(
                f"{PREFIX}_upstream_retries",
                "Requests sent upstream a second time, by reason.",
                ["component", "reason"],
            ),
        )
        self.tokens_minted = self._add(
            fast, FastCounter(f"{PREFIX}_tokens_minted", "ZGW JWTs minted.", ["caller", "component"])
        )
        self.token_cache = self._add(
            fast, FastCounter(f"{PREFIX}_token_cache_lookups", "Token cache lookups by result (hit, miss).", ["result"])
        )
        # Not per request, but between two per-request families: keeping it here keeps the exposition's order.
        self.mint_failures = self._add(
            fast,
            FastCounter(f"{PREFIX}_token_mint_failures", "Tokens that could not be minted, by reason.", ["reason"]),
        )
        self.upstream_forbidden = self._add(
            fast,
            FastCounter(
                f"{PREFIX}_upstream_forbidden",
                "Upstream 403 answers by ZGW problem code (known codes, else 'other').",
                ["component", "code"],
            ),
        )
        self.crs_rejections = self._add(
            fast,
            FastCounter(
                f"{PREFIX}_crs_rejections",
                "Upstream 412/406 answers on components with CRS headers.",
                ["component", "code"],
            ),
        )
        # Registered before the collectors below so the exposition lists families in the same order as before.
        r.register(fast)
        self.config_reloads = Counter(f"{PREFIX}_config_reloads", "Config reloads by result.", ["result"], registry=r)
        self.secret_reloads = Counter(
            f"{PREFIX}_secret_reloads", "Secret file re-reads by result.", ["result"], registry=r
        )
        self.last_reload = Gauge(
            f"{PREFIX}_config_last_reload_success_timestamp_seconds",
            "When the config was last loaded successfully.",
            registry=r,
        )
        self.circuit_state = Gauge(
            f"{PREFIX}_circuit_state",
            "Circuit breaker per component: 0 closed, 1 open, 2 half-open.",
            ["component"],
            registry=r,
        )
        self.ready = Gauge(f"{PREFIX}_ready", "1 when the gateway reports ready.", registry=r)
        self.build = Info(f"{PREFIX}_build", "Version of the gateway and of Python.", registry=r)
        self.build.info({"version": __version__, "python": platform.python_version()})
        for result in ("hit", "miss"):
            self.token_cache.labels(result)
        for result in ("success", "failure"):
            self.config_reloads.labels(result)
            self.secret_reloads.labels(result)
        self._children: dict[tuple[Any, ...], Any] = {}

    @staticmethod
    def _add(collector: FastCollector, metric: Fast) -> Fast:
        collector.metrics.append(metric)
        return metric

    def prepare(self, callers: list[str], components: list[str]) -> None:
        """Create label sets that should read 0 before anything happened (so rate() works from start)."""
        for comp in components:
            self.in_flight.labels(comp)
            self.circuit_state.labels(comp)
            for reason in FAILURE_REASONS:
                self.upstream_failures.labels(comp, reason)
            for caller in callers:
                self.tokens_minted.labels(caller, comp)

    def child(self, metric: Any, *labels: str) -> Any:
        """The cached child of `metric` for `labels`."""
        try:
            children = metric.children
        except AttributeError:
            # A prometheus_client collector: its labels() takes a lock, so its children are cached here.
            key = (id(metric), *labels)
            found = self._children.get(key)
            if found is None:
                found = self._children[key] = metric.labels(*labels)
            return found
        found = children.get(labels)
        return found if found is not None else metric.labels(*labels)


def method_label(method: str) -> str:
    return method if method in METHODS else "other"


def forbidden_code(code: object) -> str:
    return code if isinstance(code, str) and code in FORBIDDEN_CODES else "other"
