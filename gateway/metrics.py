"""What Prometheus sees: the gateway's collectors, bound to an injected registry.

Every label value comes from a bounded set: configured callers and components, resource names from the
ZGW route templates (`routing.KNOWN_RESOURCES`, else 'other'), HTTP methods, status codes, and the fixed
reason lists below. Never a path, an id, a user, a query string, a secret or a token.
Label children are cached per label set so the hot path pays one dict lookup per collector.
"""

from __future__ import annotations

import platform
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

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


class Metrics:
    """The gateway's collectors, registered in `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        r = registry
        self.requests = Counter(
            f"{PREFIX}_requests",
            "Requests handled, by caller, component, method, status code, resource and who answered.",
            ["caller", "component", "method", "code", "resource", "source"],
            registry=r,
        )
        self.request_duration = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "Time from request start to the last response byte, as the caller sees it.",
            ["caller", "component", "method", "resource"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_duration = Histogram(
            f"{PREFIX}_upstream_duration_seconds",
            "Time from sending the request upstream until the upstream's response headers arrived.",
            ["component"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            f"{PREFIX}_overhead_seconds",
            "Time the gateway itself added before forwarding (identify, token, headers).",
            ["component"],
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.request_bytes = Counter(
            f"{PREFIX}_request_bytes",
            "Request body bytes received from callers.",
            ["caller", "component"],
            registry=r,
        )
        self.response_bytes = Counter(
            f"{PREFIX}_response_bytes",
            "Response body bytes sent to callers.",
            ["caller", "component"],
            registry=r,
        )
        self.in_flight = Gauge(
            f"{PREFIX}_in_flight_requests", "Requests being handled right now.", ["component"], registry=r
        )
        self.upstream_failures = Counter(
            f"{PREFIX}_upstream_failures",
            "Requests that got no usable upstream answer, by reason.",
            ["component", "reason"],
            registry=r,
        )
        self.aborted = Counter(
            f"{PREFIX}_aborted_requests",
            "Transfers cut mid-body, by reason (body_too_large, body_timeout, upstream_reset, client_gone).",
            ["component", "reason"],
            registry=r,
        )
        self.retries = Counter(
            f"{PREFIX}_upstream_retries",
            "Requests sent upstream a second time, by reason.",
            ["component", "reason"],
            registry=r,
        )
        self.tokens_minted = Counter(f"{PREFIX}_tokens_minted", "ZGW JWTs minted.", ["caller", "component"], registry=r)
        self.token_cache = Counter(
            f"{PREFIX}_token_cache_lookups",
            "Token cache lookups by result (hit, miss).",
            ["result"],
            registry=r,
        )
        self.mint_failures = Counter(
            f"{PREFIX}_token_mint_failures",
            "Tokens that could not be minted, by reason.",
            ["reason"],
            registry=r,
        )
        self.upstream_forbidden = Counter(
            f"{PREFIX}_upstream_forbidden",
            "Upstream 403 answers by ZGW problem code (known codes, else 'other').",
            ["component", "code"],
            registry=r,
        )
        self.crs_rejections = Counter(
            f"{PREFIX}_crs_rejections",
            "Upstream 412/406 answers on components with CRS headers.",
            ["component", "code"],
            registry=r,
        )
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
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found


def method_label(method: str) -> str:
    return method if method in METHODS else "other"


def forbidden_code(code: object) -> str:
    return code if isinstance(code, str) and code in FORBIDDEN_CODES else "other"
