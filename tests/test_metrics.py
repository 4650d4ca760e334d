"""Does the gateway's lock-free metrics exposition read exactly like prometheus_client's own collectors?

The reference is the collector set built with prometheus_client's Counter/Gauge/Histogram/Info, with the
names, help texts, labels and buckets the gateway has always exported; both are fed the same observations
and their expositions are compared sample for sample (only `_created` timestamps may differ).
"""

from __future__ import annotations

import platform
import random
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client import metrics as client_metrics
from prometheus_client.parser import text_string_to_metric_families

from gateway import __version__
from gateway.metrics import FAILURE_REASONS, LATENCY_BUCKETS, OVERHEAD_BUCKETS, Metrics

P = "zgw_gateway"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
CALLERS = ["legacy-dms", "bi"]
COMPONENTS = ["zaken", "catalogi", "documenten"]


def _reference(r: CollectorRegistry) -> dict[str, Any]:
    """The gateway's metrics as plain prometheus_client collectors, in the order they are registered."""
    ref: dict[str, Any] = {
        "requests": Counter(
            f"{P}_requests",
            "Requests handled, by caller, component, method, status code, resource and who answered.",
            ["caller", "component", "method", "code", "resource", "source"],
            registry=r,
        ),
        "request_duration": Histogram(
            f"{P}_request_duration_seconds",
            "Time from request start to the last response byte, as the caller sees it.",
            ["caller", "component", "method", "resource"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
            registry=r,
        ),
        "upstream_duration": Histogram(
            f"{P}_upstream_duration_seconds",
            "Time from sending the request upstream until the upstream's response headers arrived.",
            ["component"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
            registry=r,
        ),
        "overhead": Histogram(
            f"{P}_overhead_seconds",
            "Time the gateway itself added before forwarding (identify, token, headers).",
            ["component"],
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        ),
        "request_bytes": Counter(
            f"{P}_request_bytes", "Request body bytes received from callers.", ["caller", "component"], registry=r
        ),
        "response_bytes": Counter(
            f"{P}_response_bytes", "Response body bytes sent to callers.", ["caller", "component"], registry=r
        ),
        "in_flight": Gauge(f"{P}_in_flight_requests", "Requests being handled right now.", ["component"], registry=r),
        "upstream_failures": Counter(
            f"{P}_upstream_failures",
            "Requests that got no usable upstream answer, by reason.",
            ["component", "reason"],
            registry=r,
        ),
        "aborted": Counter(
            f"{P}_aborted_requests",
            "Transfers cut mid-body, by reason (body_too_large, body_timeout, upstream_reset, client_gone).",
            ["component", "reason"],
            registry=r,
        ),
        "retries": Counter(
            f"{P}_upstream_retries",
            "Requests sent upstream a second time, by reason.",
            ["component", "reason"],
            registry=r,
        ),
        "tokens_minted": Counter(f"{P}_tokens_minted", "ZGW JWTs minted.", ["caller", "component"], registry=r),
        "token_cache": Counter(
            f"{P}_token_cache_lookups", "Token cache lookups by result (hit, miss).", ["result"], registry=r
        ),
        "mint_failures": Counter(
            f"{P}_token_mint_failures", "Tokens that could not be minted, by reason.", ["reason"], registry=r
        ),
        "upstream_forbidden": Counter(
            f"{P}_upstream_forbidden",
            "Upstream 403 answers by ZGW problem code (known codes, else 'other').",
            ["component", "code"],
            registry=r,
        ),
        "crs_rejections": Counter(
            f"{P}_crs_rejections",
            "Upstream 412/406 answers on components with CRS headers.",
            ["component", "code"],
            registry=r,
        ),
        "config_reloads": Counter(f"{P}_config_reloads", "Config reloads by result.", ["result"], registry=r),
        "secret_reloads": Counter(f"{P}_secret_reloads", "Secret file re-reads by result.", ["result"], registry=r),
        "last_reload": Gauge(
            f"{P}_config_last_reload_success_timestamp_seconds",
            "When the config was last loaded successfully.",
            registry=r,
        ),
        "circuit_state": Gauge(
            f"{P}_circuit_state",
            "Circuit breaker per component: 0 closed, 1 open, 2 half-open.",
            ["component"],
            registry=r,
        ),
        "ready": Gauge(f"{P}_ready", "1 when the gateway reports ready.", registry=r),
        "build": Info(f"{P}_build", "Version of the gateway and of Python.", registry=r),
    }
    ref["build"].info({"version": __version__, "python": platform.python_version()})
    for result in ("hit", "miss"):
        ref["token_cache"].labels(result)
    for result in ("success", "failure"):
        ref["config_reloads"].labels(result)
        ref["secret_reloads"].labels(result)
    return ref


def _reference_prepare(ref: dict[str, Any], callers: list[str], components: list[str]) -> None:
    for comp in components:
        ref["in_flight"].labels(comp)
        ref["circuit_state"].labels(comp)
        for reason in FAILURE_REASONS:
            ref["upstream_failures"].labels(comp, reason)
        for caller in callers:
            ref["tokens_minted"].labels(caller, comp)


# (attribute, label values, method, argument or None)
Op = tuple[str, tuple[str, ...], str, float | None]


def _edge_values() -> list[float]:
    """Every bucket bound exactly, just below and above it, zero, and far past the last bound."""
    values = [0.0, 1e-9, 1e6]
    for bound in (*LATENCY_BUCKETS, *OVERHEAD_BUCKETS):
        values += [bound, bound * (1 - 1e-12), bound * (1 + 1e-12), bound / 3]
    return values


def _traffic(seed: int, n: int) -> list[Op]:
    rnd = random.Random(seed)
    ops: list[Op] = []
    for value in _edge_values():
        ops.append(("request_duration", ("legacy-dms", "zaken", "GET", "zaken"), "observe", value))
        ops.append(("upstream_duration", ("zaken",), "observe", value))
        ops.append(("overhead", ("catalogi",), "observe", value))
    for _ in range(n):
        caller, comp = rnd.choice(CALLERS), rnd.choice(COMPONENTS)
        method = rnd.choice(["GET", "POST", "other"])
        code = str(rnd.choice([200, 201, 204, 400, 403, 404, 412, 502, 503]))
        resource = rnd.choice(["zaken", "statussen", "other"])
        ops.append(
            ("requests", (caller, comp, method, code, resource, rnd.choice(["upstream", "gateway"])), "inc", None)
        )
        ops.append(("request_duration", (caller, comp, method, resource), "observe", rnd.expovariate(20)))
        ops.append(("upstream_duration", (comp,), "observe", rnd.lognormvariate(-4, 2)))
        ops.append(("overhead", (comp,), "observe", rnd.expovariate(5000)))
        ops.append(("request_bytes", (caller, comp), "inc", float(rnd.randrange(0, 10_000_000))))
        ops.append(("response_bytes", (caller, comp), "inc", rnd.random() * 1e5))
        ops.append(("token_cache", (rnd.choice(["hit", "miss"]),), "inc", None))
        ops.append(("in_flight", (comp,), rnd.choice(["inc", "dec"]), None))
        rare: list[Op] = [
            ("tokens_minted", (caller, comp), "inc", None),
            ("upstream_failures", (comp, rnd.choice(FAILURE_REASONS)), "inc", None),
            ("aborted", (comp, rnd.choice(["body_too_large", "client_gone"])), "inc", None),
            ("retries", (comp, "reset"), "inc", 1.0),
            ("upstream_forbidden", (comp, rnd.choice(["permission_denied", "other"])), "inc", None),
            ("crs_rejections", (comp, rnd.choice(["406", "412"])), "inc", None),
            ("mint_failures", ("secret_unavailable",), "inc", None),
            ("in_flight", (comp,), "set", float(rnd.randrange(0, 9))),
            ("circuit_state", (comp,), "set", float(rnd.randrange(0, 3))),
            ("config_reloads", (rnd.choice(["success", "failure"]),), "inc", None),
        ]
        if rnd.random() < 0.3:
            ops.append(rnd.choice(rare))
    return ops


def _apply(ops: list[Op], target: Any, via_child: Metrics | None) -> None:
    for i, (attr, labels, method, arg) in enumerate(ops):
        metric = target[attr] if isinstance(target, dict) else getattr(target, attr)
        # Alternate between the two ways the gateway reaches a child.
        child = via_child.child(metric, *labels) if via_child is not None and i % 2 else metric.labels(*labels)
        if arg is None:
            getattr(child, method)()
        else:
            getattr(child, method)(arg)


def _mask_created(exposition: str) -> str:
    return re.sub(r"^(\w+_created(?:\{.*\})?) \S+$", r"\1 <created>", exposition, flags=re.MULTILINE)


def _samples(exposition: str) -> list[tuple[str, str, str, list[tuple[str, dict[str, str], float | None]]]]:
    families = []
    for family in text_string_to_metric_families(exposition):
        samples = [(s.name, s.labels, None if s.name.endswith("_created") else s.value) for s in family.samples]
        families.append((family.name, family.type, family.documentation, samples))
    return families


def _pair(ops: list[Op]) -> tuple[CollectorRegistry, CollectorRegistry]:
    """(the gateway's registry, the reference registry), both fed `ops`."""
    registry, reference = CollectorRegistry(), CollectorRegistry()
    metrics = Metrics(registry)
    ref = _reference(reference)
    metrics.prepare(CALLERS, COMPONENTS)
    _reference_prepare(ref, CALLERS, COMPONENTS)
    _apply(ops, metrics, metrics)
    _apply(ops, ref, None)
    metrics.last_reload.set(1700000000.25)
    ref["last_reload"].set(1700000000.25)
    metrics.ready.set(1)
    ref["ready"].set(1)
    return registry, reference


@pytest.fixture
def created_series() -> Iterator[None]:
    """Restores prometheus_client's created-series switch a test flips."""
    before = client_metrics._use_created
    yield
    client_metrics._use_created = before


def test_exposition_matches_prometheus_client_sample_for_sample() -> None:
    start = time.time()
    registry, reference = _pair(_traffic(seed=7, n=3000))
    got, want = generate_latest(registry).decode(), generate_latest(reference).decode()
    assert _samples(got) == _samples(want)
    assert _mask_created(got) == _mask_created(want)
    histograms = [f for f in text_string_to_metric_families(got) if f.type == "histogram"]
    assert [f.name for f in histograms] == [
        f"{P}_request_duration_seconds",
        f"{P}_upstream_duration_seconds",
        f"{P}_overhead_seconds",
    ]
    assert all(any(s.labels.get("le") == "+Inf" for s in f.samples) for f in histograms)
    created = [s.value for f in text_string_to_metric_families(got) for s in f.samples if s.name.endswith("_created")]
    if client_metrics._use_created:
        assert created
    assert all(start <= value <= time.time() for value in created)


def test_a_fresh_gateway_exports_the_same_families_as_prometheus_client() -> None:
    registry, reference = _pair([])
    got, want = generate_latest(registry).decode(), generate_latest(reference).decode()
    assert _mask_created(got) == _mask_created(want)
    # Labelled families without children still announce themselves.
    assert f"# TYPE {P}_crs_rejections_total counter" in got
    assert f"# TYPE {P}_request_duration_seconds histogram" in got


@pytest.mark.parametrize("enabled", [False, True])
def test_created_series_follow_prometheus_client_switch(created_series: None, enabled: bool) -> None:
    if enabled:
        client_metrics.enable_created_metrics()
    else:
        client_metrics.disable_created_metrics()
    registry, reference = _pair(_traffic(seed=11, n=200))
    got, want = generate_latest(registry).decode(), generate_latest(reference).decode()
    assert _mask_created(got) == _mask_created(want)
    assert (f"{P}_requests_created{{" in got) is enabled
    assert (f"{P}_overhead_seconds_created{{" in got) is enabled


def test_promtool_accepts_the_exposition() -> None:
    if not shutil.which(PROMTOOL):
        pytest.skip("promtool is not installed")
    registry, _ = _pair(_traffic(seed=3, n=500))
    exposition = generate_latest(registry)
    proc = subprocess.run([PROMTOOL, "check", "metrics"], input=exposition, capture_output=True, timeout=60)
    assert proc.returncode == 0, (proc.stdout + proc.stderr).decode()
    assert proc.stdout.strip() == b"", proc.stdout.decode()


def test_get_sample_value_reads_the_fast_collectors() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    labels = {
        "caller": "legacy-dms",
        "component": "zaken",
        "method": "GET",
        "code": "200",
        "resource": "zaken",
        "source": "upstream",
    }
    assert registry.get_sample_value(f"{P}_requests_total", labels) is None
    for _ in range(3):
        metrics.child(metrics.requests, "legacy-dms", "zaken", "GET", "200", "zaken", "upstream").inc()
    metrics.requests.labels(**labels).inc(2)
    assert registry.get_sample_value(f"{P}_requests_total", labels) == 5
    duration = metrics.child(metrics.request_duration, "legacy-dms", "zaken", "GET", "zaken")
    for value in (0.001, 0.0011, 0.3, 100.0):
        duration.observe(value)
    hist = {"caller": "legacy-dms", "component": "zaken", "method": "GET", "resource": "zaken"}
    assert registry.get_sample_value(f"{P}_request_duration_seconds_bucket", {**hist, "le": "0.001"}) == 1
    assert registry.get_sample_value(f"{P}_request_duration_seconds_bucket", {**hist, "le": "0.0025"}) == 2
    assert registry.get_sample_value(f"{P}_request_duration_seconds_bucket", {**hist, "le": "60.0"}) == 3
    assert registry.get_sample_value(f"{P}_request_duration_seconds_bucket", {**hist, "le": "+Inf"}) == 4
    assert registry.get_sample_value(f"{P}_request_duration_seconds_count", hist) == 4
    assert registry.get_sample_value(f"{P}_request_duration_seconds_sum", hist) == pytest.approx(100.3021)
    gauge = metrics.child(metrics.in_flight, "zaken")
    gauge.inc()
    gauge.inc()
    gauge.dec()
    assert registry.get_sample_value(f"{P}_in_flight_requests", {"component": "zaken"}) == 1
    assert registry.get_sample_value(f"{P}_token_cache_lookups_total", {"result": "miss"}) == 0


def test_children_are_cached_and_shared_between_labels_and_child() -> None:
    metrics = Metrics(CollectorRegistry())
    first = metrics.child(metrics.upstream_failures, "zaken", "connect")
    assert metrics.upstream_failures.labels("zaken", "connect") is first
    assert metrics.upstream_failures.labels(component="zaken", reason="connect") is first
    assert metrics.child(metrics.upstream_failures, "zaken", "connect") is first
    assert metrics.child(metrics.circuit_state, "zaken") is metrics.child(metrics.circuit_state, "zaken")


def test_label_and_value_mistakes_fail_like_prometheus_client() -> None:
    metrics = Metrics(CollectorRegistry())
    with pytest.raises(ValueError, match="Incorrect label count"):
        metrics.requests.labels("only-one")
    with pytest.raises(ValueError, match="Incorrect label names"):
        metrics.retries.labels(component="zaken", why="reset")
    with pytest.raises(ValueError, match="non-negative"):
        metrics.child(metrics.request_bytes, "legacy-dms", "zaken").inc(-1)


def test_a_second_collector_with_a_gateway_name_is_refused() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Counter(f"{P}_requests", "again", registry=registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Histogram(f"{P}_overhead_seconds", "again", registry=registry)
