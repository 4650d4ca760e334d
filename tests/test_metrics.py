"""The gateway's metric catalogue (gateway.dataplane.metrics): cached children, bounded label sets, a valid exposition.

The families themselves are prometheus_client's; tests/test_metrics_prometheus.py checks what a real
Prometheus reads after known traffic.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from servers import metric_absent, metric_value

from gateway.dataplane.failures import Abort
from gateway.dataplane.metrics import FAILURE_REASONS, LATENCY_BUCKETS, Metrics, forbidden_code, method_label

P = "zgw_gateway"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def families(registry: CollectorRegistry) -> dict[str, str]:
    return {f.name: f.type for f in registry.collect()}


def test_the_catalogue_announces_every_family_from_the_start() -> None:
    registry = CollectorRegistry()
    Metrics(registry).prepare(["legacy-dms"], ["zaken"])
    assert families(registry) == {
        f"{P}_requests": "counter",
        f"{P}_request_duration_seconds": "histogram",
        f"{P}_upstream_duration_seconds": "histogram",
        f"{P}_overhead_seconds": "histogram",
        f"{P}_request_bytes": "counter",
        f"{P}_response_bytes": "counter",
        f"{P}_in_flight_requests": "gauge",
        f"{P}_upstream_failures": "counter",
        f"{P}_aborted_requests": "counter",
        f"{P}_upstream_retries": "counter",
        f"{P}_upstream_connections_closed": "counter",
        f"{P}_tokens_minted": "counter",
        f"{P}_token_cache_lookups": "counter",
        f"{P}_token_mint_failures": "counter",
        f"{P}_upstream_forbidden": "counter",
        f"{P}_crs_rejections": "counter",
        f"{P}_config_reloads": "counter",
        f"{P}_secret_reloads": "counter",
        f"{P}_config_last_reload_success_timestamp_seconds": "gauge",
        f"{P}_circuit_state": "gauge",
        f"{P}_notifications": "counter",
        f"{P}_notification_relay_duration_seconds": "histogram",
        f"{P}_ready": "gauge",
        f"{P}_build": "info",
    }
    # rate() works from the first scrape: these series read 0 before anything happened.
    for reason in FAILURE_REASONS:
        assert registry.get_sample_value(f"{P}_upstream_failures_total", {"component": "zaken", "reason": reason}) == 0
    assert registry.get_sample_value(f"{P}_tokens_minted_total", {"caller": "legacy-dms", "component": "zaken"}) == 0
    assert registry.get_sample_value(f"{P}_token_cache_lookups_total", {"result": "hit"}) == 0


def test_reason_labels_keep_the_values_dashboards_and_alerts_match() -> None:
    """helm/'s dashboard and alerts group by these strings: the enums may grow, never rename a value."""
    registry = CollectorRegistry()
    Metrics(registry).prepare([], ["zaken"])
    exposed = generate_latest(registry).decode()
    for reason in ("connect", "timeout", "reset", "dns", "pool", "circuit_open", "tls", "overloaded", "bad_response"):
        assert f'{P}_upstream_failures_total{{component="zaken",reason="{reason}"}} 0.0' in exposed
    assert [str(a) for a in Abort] == ["body_too_large", "body_timeout", "upstream_reset", "client_gone"]


def test_children_are_made_once_and_read_as_prometheus_client_would() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    first = metrics.upstream_failures("zaken", "connect")
    assert metrics.upstream_failures("zaken", "connect") is first
    first.inc()
    metrics.upstream_failures("zaken", "connect").inc(2)
    assert registry.get_sample_value(f"{P}_upstream_failures_total", {"component": "zaken", "reason": "connect"}) == 3
    with pytest.raises(ValueError, match="only goes up"):
        first.inc(-1)
    with pytest.raises(ValueError, match="2 label values expected"):
        metrics.upstream_failures("zaken")
    duration = metrics.request_duration("legacy-dms", "zaken", "GET", "zaken")
    for value in (0.001, 0.0011, 0.3, 100.0):
        duration.observe(value)
    hist = {"caller": "legacy-dms", "component": "zaken", "method": "GET", "resource": "zaken"}
    assert registry.get_sample_value(f"{P}_request_duration_seconds_bucket", {**hist, "le": "0.001"}) == 1
    assert registry.get_sample_value(f"{P}_request_duration_seconds_bucket", {**hist, "le": "60.0"}) == 3
    assert registry.get_sample_value(f"{P}_request_duration_seconds_count", hist) == 4


def test_a_reload_drops_the_gauges_of_removed_components_and_keeps_counters() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.prepare(["a"], ["zaken", "catalogi"])
    metrics.in_flight("catalogi").set(2)
    metrics.circuit_state("catalogi").set(1)
    metrics.requests("a", "catalogi", "GET", "200", "zaakgtypen", "upstream").inc()
    metrics.prepare(["a"], ["zaken"])
    assert registry.get_sample_value(f"{P}_in_flight_requests", {"component": "catalogi"}) is None
    assert registry.get_sample_value(f"{P}_circuit_state", {"component": "catalogi"}) is None
    assert registry.get_sample_value(f"{P}_in_flight_requests", {"component": "zaken"}) == 0
    labels = {"caller": "a", "component": "catalogi", "method": "GET", "code": "200", "resource": "zaakgtypen"}
    assert registry.get_sample_value(f"{P}_requests_total", {**labels, "source": "upstream"}) == 1
    metrics.prepare(["a"], ["zaken", "catalogi"])  # back again: a fresh gauge, not the dropped one
    assert registry.get_sample_value(f"{P}_in_flight_requests", {"component": "catalogi"}) == 0


def test_label_values_come_from_bounded_sets() -> None:
    assert [method_label(m) for m in ("GET", "PATCH", "PROPFIND", "get")] == ["GET", "PATCH", "other", "other"]
    assert forbidden_code("invalid-jwt-signature") == "invalid-jwt-signature"
    assert forbidden_code("a caller-controlled string") == "other"


def test_a_second_collector_with_a_gateway_name_is_refused() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Counter(f"{P}_requests", "again", registry=registry)


def test_promtool_accepts_the_exposition() -> None:
    if not shutil.which(PROMTOOL):
        pytest.skip("promtool is not installed: run scripts/install-tools as root (Debian package prometheus)")
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.prepare(["legacy-dms", "bi"], ["zaken", "catalogi"])
    metrics.requests("bi", "zaken", "GET", "200", "zaken", "upstream").inc()
    metrics.overhead("zaken").observe(0.0002)
    metrics.upstream_forbidden("zaken", "permission_denied").inc()
    proc = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=generate_latest(registry), capture_output=True, timeout=60
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr).decode()
    assert proc.stdout.strip() == b"", proc.stdout.decode()


def test_the_metric_helpers_fail_on_a_metric_or_label_that_does_not_exist() -> None:
    registry = CollectorRegistry()
    counter = Counter("zgw_gateway_things", "Things.", ["reason"], registry=registry)
    empty = generate_latest(registry).decode()
    assert metric_absent(empty, "zgw_gateway_things_total")
    with pytest.raises(AssertionError, match="no series"):
        metric_value(empty, "zgw_gateway_things_total", reason="a")
    assert metric_value(empty, "zgw_gateway_things_total", default=0.0, reason="a") == 0.0  # none yet, said so
    counter.labels("a").inc(2)
    exposition = generate_latest(registry).decode()
    assert metric_value(exposition, "zgw_gateway_things_total", reason="a") == 2
    with pytest.raises(AssertionError, match="no metric"):
        metric_value(exposition, "zgw_gateway_thing_total", default=0.0)  # a renamed metric never reads 0
    with pytest.raises(AssertionError, match="no label"):
        metric_value(exposition, "zgw_gateway_things_total", default=0.0, code="a")
    with pytest.raises(AssertionError, match="no metric"):
        metric_absent(exposition, "zgw_gateway_thing_total")


def test_the_series_read_as_prometheus_clients_own_collectors_would() -> None:
    """The gateway keeps its series as floats (metrics.Labelled); what /metrics reads must be what prometheus_client's
    own Counter, Gauge and Histogram give after the same updates: names, help, types, labels, buckets, values."""
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    metrics = Metrics(ours)
    requests = Counter(f"{P}_requests", metrics.requests.documentation, metrics.requests.labelnames, registry=theirs)
    in_flight = Gauge(
        f"{P}_in_flight_requests", metrics.in_flight.documentation, metrics.in_flight.labelnames, registry=theirs
    )
    duration = Histogram(
        f"{P}_request_duration_seconds",
        metrics.request_duration.documentation,
        metrics.request_duration.labelnames,
        buckets=LATENCY_BUCKETS,
        registry=theirs,
    )
    for mine, own in (
        (metrics.requests, requests),
        (metrics.in_flight, in_flight),
        (metrics.request_duration, duration),
    ):
        assert mine.name == own._name
    labels = ("bi", "zaken", "GET", "200", "zaken", "upstream")
    for amount in (1, 2.5):
        metrics.requests(*labels).inc(amount)
        requests.labels(*labels).inc(amount)
    for change in (3, -1):
        metrics.in_flight("zaken").inc(change)
        in_flight.labels("zaken").inc(change)
    metrics.in_flight("catalogi").set(7)
    in_flight.labels("catalogi").set(7)
    for value in (0.0, 0.001, 0.0011, 0.3, 60.0, 61.0):
        metrics.request_duration("bi", "zaken", "GET", "zaken").observe(value)
        duration.labels("bi", "zaken", "GET", "zaken").observe(value)
    exposed = {f.name: f for f in ours.collect()}
    for family in theirs.collect():
        assert exposed[family.name] == family
