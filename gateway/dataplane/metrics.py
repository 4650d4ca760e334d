"""What Prometheus sees: the gateway's metric catalogue, prometheus_client collectors in an injected registry.

Every label value comes from a bounded set: configured callers and components, resource names from the
ZGW route templates (`routing.KNOWN_RESOURCES`, else 'other'), HTTP methods, status codes, and the fixed
reason and code lists below. Never a path, an id, a user, a query string, a secret or a token.

The labelled families are `Labelled`: series kept as plain floats, each made once, exposed through the
registry as prometheus_client's own collectors would be (bench/micro.py measures what a child costs per call).
"""

from __future__ import annotations

import platform
from bisect import bisect_left
from collections.abc import Callable
from itertools import accumulate
from typing import Any, ClassVar, Generic, TypeVar

from prometheus_client import CollectorRegistry, Gauge, Info, disable_created_metrics
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from gateway import __version__
from gateway.config.sections import METHODS
from gateway.dataplane.failures import Abort, Failure
from gateway.http1.pool import CLOSE_REASONS
from gateway.zgw import FORBIDDEN_CODES

PREFIX = "zgw_gateway"
# A `_created` series beside every counter and histogram child doubles /metrics for a start time that
# process_start_time_seconds already gives (issue 22). prometheus_client has no per-registry switch, only
# this process-wide one (or PROMETHEUS_DISABLE_CREATED_SERIES); the gateway's registry is the process's.
disable_created_metrics()  # type: ignore[no-untyped-call]
# From 1 ms to 60 s: ZGW calls range from cached catalogus reads to multi-GB document transfers.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
# Why a pooled upstream connection was closed instead of reused (connection.Connection.unusable).
FAILURE_REASONS = tuple(Failure)


class CounterValue:
    """One counter series: a float. Only the event loop's thread touches metrics (both listeners serve on
    it, server.py), so there is no lock; prometheus_client's children take one on every call."""

    __slots__ = ("value",)
    family: ClassVar[type[Metric]] = CounterMetricFamily

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        self.value += amount

    def add_to(self, family: Any, values: tuple[str, ...]) -> None:
        family.add_metric(values, self.value)


class GaugeValue(CounterValue):
    __slots__ = ()
    family = GaugeMetricFamily

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)


class HistogramValue:
    """One histogram series: a count per bucket (not cumulative, as prometheus_client keeps them) and a sum."""

    __slots__ = ("bounds", "counts", "le", "sum")
    family: ClassVar[type[Metric]] = HistogramMetricFamily

    def __init__(self, bounds: tuple[float, ...], le: list[str]) -> None:
        self.bounds, self.le = bounds, le
        self.counts = [0.0] * (len(bounds) + 1)  # the last: above every bound, +Inf
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        self.sum += amount
        self.counts[bisect_left(self.bounds, amount)] += 1.0  # the first bucket with amount <= bound

    def add_to(self, family: Any, values: tuple[str, ...]) -> None:
        family.add_metric(values, list(zip(self.le, accumulate(self.counts), strict=True)), self.sum)


def histogram(bounds: tuple[float, ...]) -> Callable[[], HistogramValue]:
    """The series maker of a histogram with these bucket bounds (and +Inf)."""
    le = [floatToGoString(b) for b in bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
    return lambda: HistogramValue(bounds, le)


V = TypeVar("V", CounterValue, GaugeValue, HistogramValue)


class Labelled(Generic[V]):
    """A labelled metric family whose series are plain floats, each made once: `metric(*values)` is one dict
    lookup. A collector in the registry: /metrics reads the same exposition prometheus_client's Counter,
    Gauge and Histogram give (without `_created`, disabled above). prometheus_client's children (a lock,
    checks and a chain of calls per update) were most of the metric work per request (bench/README.md,
    "Instructions per proxied GET")."""

    def __init__(
        self, new: Callable[[], V], name: str, documentation: str, labelnames: list[str], *, registry: CollectorRegistry
    ) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, labelnames
        self._new: Callable[[], V] = new
        self._family: type[Metric] = new().family
        self._children: dict[tuple[str, ...], V] = {}
        registry.register(self)

    def __call__(self, *values: str) -> V:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name}: {len(self.labelnames)} label values expected, got {len(values)}")
            child = self._children[values] = self._new()
        return child

    def forget(self, keep: set[str]) -> None:
        """Drop the label sets whose first value is not in `keep` (e.g. a component removed by a reload)."""
        for values in list(self._children):
            if values[0] not in keep:
                del self._children[values]

    def describe(self) -> list[Metric]:
        return [self._family(self.name, self.documentation, labels=self.labelnames)]  # type: ignore[call-arg]

    def collect(self) -> list[Metric]:
        family = self._family(self.name, self.documentation, labels=self.labelnames)  # type: ignore[call-arg]
        for values, child in self._children.items():
            child.add_to(family, values)
        return [family]


class Metrics:
    """The gateway's collectors, registered in `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = r = registry
        self.requests = Labelled(
            CounterValue,
            f"{PREFIX}_requests",
            "Requests handled, by caller, component, method, status code, resource and who answered.",
            ["caller", "component", "method", "code", "resource", "source"],
            registry=r,
        )
        self.request_duration = Labelled(
            histogram(LATENCY_BUCKETS),
            f"{PREFIX}_request_duration_seconds",
            "Time from request start to the last response byte, as the caller sees it.",
            ["caller", "component", "method", "resource"],
            registry=r,
        )
        self.upstream_duration = Labelled(
            histogram(LATENCY_BUCKETS),
            f"{PREFIX}_upstream_duration_seconds",
            "Time from sending the request upstream until the upstream's response headers arrived.",
            ["component"],
            registry=r,
        )
        self.overhead = Labelled(
            histogram(OVERHEAD_BUCKETS),
            f"{PREFIX}_overhead_seconds",
            "Time the gateway itself added before forwarding (identify, token, headers).",
            ["component"],
            registry=r,
        )
        self.request_bytes = Labelled(
            CounterValue,
            f"{PREFIX}_request_bytes",
            "Request body bytes received from callers.",
            ["caller", "component"],
            registry=r,
        )
        self.response_bytes = Labelled(
            CounterValue,
            f"{PREFIX}_response_bytes",
            "Response body bytes sent to callers.",
            ["caller", "component"],
            registry=r,
        )
        self.in_flight = Labelled(
            GaugeValue, f"{PREFIX}_in_flight_requests", "Requests being handled right now.", ["component"], registry=r
        )
        self.upstream_failures = Labelled(
            CounterValue,
            f"{PREFIX}_upstream_failures",
            "Requests that got no usable upstream answer, by reason.",
            ["component", "reason"],
            registry=r,
        )
        self.aborted = Labelled(
            CounterValue,
            f"{PREFIX}_aborted_requests",
            f"Transfers cut mid-body, by reason ({', '.join(Abort)}).",
            ["component", "reason"],
            registry=r,
        )
        self.retries = Labelled(
            CounterValue,
            f"{PREFIX}_upstream_retries",
            "Requests sent upstream a second time, by reason.",
            ["component", "reason"],
            registry=r,
        )
        self.connections_closed = Labelled(
            CounterValue,
            f"{PREFIX}_upstream_connections_closed",
            "Upstream connections closed instead of reused, by reason (stray_bytes: the upstream sent "
            "bytes nobody asked for; distrusted: reusable, but that upstream sent stray bytes within the last "
            "60 s).",
            ["component", "reason"],
            registry=r,
        )
        self.tokens_minted = Labelled(
            CounterValue, f"{PREFIX}_tokens_minted", "ZGW JWTs minted.", ["caller", "component"], registry=r
        )
        self.token_cache = Labelled(
            CounterValue,
            f"{PREFIX}_token_cache_lookups",
            "Token cache lookups by result (hit, miss).",
            ["result"],
            registry=r,
        )
        self.mint_failures = Labelled(
            CounterValue,
            f"{PREFIX}_token_mint_failures",
            "Tokens that could not be minted, by reason.",
            ["reason"],
            registry=r,
        )
        self.upstream_forbidden = Labelled(
            CounterValue,
            f"{PREFIX}_upstream_forbidden",
            "Upstream 403 answers by ZGW problem code (known codes, else 'other').",
            ["component", "code"],
            registry=r,
        )
        self.crs_rejections = Labelled(
            CounterValue,
            f"{PREFIX}_crs_rejections",
            "Upstream 412/406 answers on components with CRS headers.",
            ["component", "code"],
            registry=r,
        )
        self.config_reloads = Labelled(
            CounterValue, f"{PREFIX}_config_reloads", "Config reloads by result.", ["result"], registry=r
        )
        self.secret_reloads = Labelled(
            CounterValue, f"{PREFIX}_secret_reloads", "Secret file re-reads by result.", ["result"], registry=r
        )
        self.last_reload = Gauge(
            f"{PREFIX}_config_last_reload_success_timestamp_seconds",
            "When the config was last loaded successfully.",
            registry=r,
        )
        self.circuit_state = Labelled(
            GaugeValue,
            f"{PREFIX}_circuit_state",
            "Circuit breaker per component: 0 closed, 1 open, 2 half-open.",
            ["component"],
            registry=r,
        )
        self.notifications = Labelled(
            CounterValue,
            f"{PREFIX}_notifications",
            "Requests on the notification endpoints, by caller, kanaal and outcome (forwarded, failed, probe, "
            "unauthenticated, refused, invalid); their sum is what was received.",
            ["caller", "kanaal", "outcome"],
            registry=r,
        )
        self.notification_relay_duration = Labelled(
            histogram(LATENCY_BUCKETS),
            f"{PREFIX}_notification_relay_duration_seconds",
            "Time from relaying a notification to the legacy receiver until its answer.",
            ["caller", "kanaal"],
            registry=r,
        )
        self.ready = Gauge(f"{PREFIX}_ready", "1 when the gateway reports ready.", registry=r)
        Info(f"{PREFIX}_build", "Version of the gateway and of Python.", registry=r).info(
            {"version": __version__, "python": platform.python_version()}
        )
        for result in ("hit", "miss"):
            self.token_cache(result)
        for result in ("success", "failure"):
            self.config_reloads(result)
            self.secret_reloads(result)

    def prepare(self, callers: list[str], components: list[str]) -> None:
        """Label sets that read 0 before anything happened (so rate() works from the start); the gauges of
        components a reload removed are dropped."""
        for comp in components:
            self.in_flight(comp)
            self.circuit_state(comp)
            for failure in FAILURE_REASONS:
                self.upstream_failures(comp, failure)
            for reason in CLOSE_REASONS:
                self.connections_closed(comp, reason)
            for caller in callers:
                self.tokens_minted(caller, comp)
        for gauge in (self.in_flight, self.circuit_state):
            gauge.forget(set(components))

    def prepare_notifications(self, kanalen: dict[str, list[str]]) -> None:
        """Counters that read 0 for each receiving caller and kanaal (and `-`, `other`) before any delivery."""
        for caller, names in kanalen.items():
            for kanaal in [*names, "other"]:
                for outcome in ("forwarded", "failed"):
                    self.notifications(caller, kanaal, outcome)
            for outcome in ("probe", "unauthenticated", "refused", "invalid", "failed"):
                self.notifications(caller, "-", outcome)


def method_label(method: str) -> str:
    return method if method in METHODS else "other"


def forbidden_code(code: str) -> str:
    return code if code in FORBIDDEN_CODES else "other"
