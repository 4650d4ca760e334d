"""End to end: what a real Prometheus scraping the admin port reads after known traffic, and promtool's lint.

The gateway runs as a process in front of the sandbox, a ZGW double that answers 412 (missing CRS) and 403
(permission_denied), and a closed port ("upstream down"). Prometheus (Debian `prometheus`) scrapes the admin
port every second; the assertions go through its HTTP API, so they hold for what an operator's dashboards see.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import API_KEY, READONLY_KEY, base_config
from servers import GatewayProcess, ThreadServer, free_port, metric_value, wait_until
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def _problem(status: int, code: str) -> Response:
    body = {"type": f"https://example.invalid/ref/fouten/{code}/", "code": code, "title": code, "status": status}
    return Response(json.dumps(body), status_code=status, media_type="application/problem+json")


def _strict_upstream() -> Starlette:
    """Answers like Open Zaak would to a request it refuses: 412 on zaken, 403 permission_denied elsewhere."""

    async def zaken(request: Request) -> Response:
        await request.body()
        return _problem(412, "precondition_failed")

    async def other(request: Request) -> Response:
        return _problem(403, "permission_denied")

    return Starlette(
        routes=[
            Route("/strict/api/v1/zaken", zaken, methods=["GET", "POST"]),
            Route("/strict/api/v1/statussen", other),
        ]
    )


@pytest.fixture
def strict_upstream() -> Iterator[str]:
    with ThreadServer(_strict_upstream()) as server:
        yield server.url


def _config(sandbox: str, strict: str) -> dict[str, Any]:
    config = base_config(sandbox)
    config["components"]["strict"] = {
        "prefix": "/strict/api/v1",
        "upstream": f"{strict}/strict/api/v1",
        "crs": "EPSG:4326",
    }
    # Nothing listens on this port: every request is a connect failure.
    config["components"]["down"] = {"prefix": "/down/api/v1", "upstream": f"http://127.0.0.1:{free_port()}/api/v1"}
    config["callers"][0]["components"] += ["strict", "down"]
    return config


# (caller key or None, method, path, extra headers, body, expected status)
Traffic = list[tuple[str | None, str, str, dict[str, str], bytes, int]]
POST_BODY = json.dumps({"zaaktype": "x" * 77}).encode()
TRAFFIC: Traffic = [
    *[(API_KEY, "GET", "/zaken/api/v1/zaken", {}, b"", 200)] * 5,
    *[(READONLY_KEY, "GET", "/zaken/api/v1/zaken", {}, b"", 200)] * 3,
    *[(API_KEY, "GET", "/no/such/api", {}, b"", 404)] * 2,
    *[("not-a-known-key", "GET", "/zaken/api/v1/zaken", {}, b"", 401)] * 2,
    *[(API_KEY, "GET", "/strict/api/v1/zaken", {}, b"", 412)] * 2,
    (API_KEY, "POST", "/strict/api/v1/zaken", {"Content-Type": "application/json"}, POST_BODY, 412),
    (API_KEY, "GET", "/strict/api/v1/statussen", {}, b"", 403),
    (API_KEY, "GET", "/zaken/api/v1/zaken", {"Accept-Crs": "EPSG:28992"}, b"", 406),
    *[(API_KEY, "GET", "/down/api/v1/things", {}, b"", 502)] * 3,
]


def _send(gw: GatewayProcess, traffic: Traffic) -> int:
    """Send the traffic, check every status, return the response body bytes the callers received."""
    received = 0
    with httpx.Client(base_url=gw.url, timeout=20) as client:
        for key, method, path, headers, body, expected in traffic:
            all_headers = {"X-API-Key": key, **headers} if key else headers
            r = client.request(method, path, headers=all_headers, content=body or None)
            assert r.status_code == expected, (method, path, r.status_code, r.text[:300])
            received += len(r.content)
    return received


class PromServer:
    """A real Prometheus on 127.0.0.1 scraping one target every second."""

    def __init__(self, target: str, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "zgw-gateway", "static_configs": [{"targets": [target]}]}],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        (workdir / "tsdb").mkdir()
        self.log = open(workdir / "prometheus.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}")
            try:
                return httpx.get(self.url + "/-/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, 30, 0.2)

    def query(self, expr: str) -> dict[tuple[tuple[str, str], ...], float]:
        """Instant query; one entry per series, keyed by its sorted labels."""
        r = httpx.get(self.url + "/api/v1/query", params={"query": expr}, timeout=5)
        r.raise_for_status()
        data = r.json()["data"]
        assert data["resultType"] == "vector", data
        return {tuple(sorted(s["metric"].items())): float(s["value"][1]) for s in data["result"]}

    def scalar(self, expr: str) -> float:
        result = self.query(expr)
        assert len(result) == 1, (expr, result)
        return next(iter(result.values()))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Callable[[str], PromServer]]:
    if not Path(PROMETHEUS).exists():
        pytest.skip("Prometheus is not installed: run scripts/install-tools as root (Debian package prometheus)")
    started: list[PromServer] = []

    def start(target: str) -> PromServer:
        workdir = tmp_path / f"prometheus{len(started)}"
        workdir.mkdir()
        server = PromServer(target, workdir)
        started.append(server)
        server.wait_ready()
        return server

    yield start
    for server in started:
        server.stop()


def _by(prom: PromServer, expr: str, *names: str) -> dict[Any, float]:
    """The query's series keyed by the values of `names` (one name: the bare value)."""
    out: dict[Any, float] = {}
    for labels, value in prom.query(expr).items():
        found = dict(labels)
        key = tuple(found[n] for n in names)
        out[key[0] if len(names) == 1 else key] = value
    return out


def test_prometheus_reads_exactly_the_traffic_sent(
    sandbox: str,
    strict_upstream: str,
    gateway_factory: Callable[..., GatewayProcess],
    prometheus_factory: Callable[[str], PromServer],
) -> None:
    before_start = time.time()
    gw = gateway_factory(_config(sandbox, strict_upstream))
    after_start = time.time()
    prom = prometheus_factory(f"127.0.0.1:{gw.admin_port}")

    received = _send(gw, TRAFFIC)
    # A request is counted just after its last byte goes out: first see the gateway count them all, then wait
    # for a scrape that started after that.
    wait_until(lambda: metric_value(gw.metrics(), "zgw_gateway_requests_total", default=0.0) == len(TRAFFIC), 10)
    counted = time.time()
    wait_until(lambda: any(t > counted for t in prom.query('timestamp(up{job="zgw-gateway"})').values()), 20, 0.2)
    assert prom.scalar('up{job="zgw-gateway"}') == 1

    assert _by(prom, "sum by (code, source) (zgw_gateway_requests_total)", "code", "source") == {
        ("200", "upstream"): 8,
        ("404", "gateway"): 2,
        ("401", "gateway"): 2,
        ("412", "upstream"): 3,
        ("403", "upstream"): 1,
        ("406", "upstream"): 1,
        ("502", "gateway"): 3,
    }
    # No route: neither component nor caller is looked at. A bad key: the component is known, the caller not.
    assert _by(prom, "sum by (caller, component) (zgw_gateway_requests_total)", "caller", "component") == {
        ("legacy-dms", "zaken"): 6,
        ("reporting", "zaken"): 3,
        ("legacy-dms", "strict"): 4,
        ("legacy-dms", "down"): 3,
        ("unknown", "none"): 2,
        ("unknown", "zaken"): 2,
    }
    assert _by(prom, "sum by (method) (zgw_gateway_requests_total)", "method") == {"GET": 19, "POST": 1}
    resources = _by(prom, "sum by (resource) (zgw_gateway_requests_total)", "resource")
    assert resources["zaken"] == 9 + 2 + 3  # sandbox zaken, bad key on zaken, strict zaken
    assert resources["none"] == 2

    # Histograms: one observation per request, and the +Inf bucket agrees with _count.
    assert prom.scalar("sum(zgw_gateway_request_duration_seconds_count)") == len(TRAFFIC)
    assert prom.scalar('sum(zgw_gateway_request_duration_seconds_bucket{le="+Inf"})') == len(TRAFFIC)
    assert prom.scalar('sum(zgw_gateway_request_duration_seconds_bucket{le="60.0"})') == len(TRAFFIC)
    upstream = _by(prom, "sum by (component) (zgw_gateway_upstream_duration_seconds_count)", "component")
    assert upstream == {"zaken": 9, "strict": 4}  # the closed port never answered, so no upstream time
    overhead = _by(prom, "sum by (component) (zgw_gateway_overhead_seconds_count)", "component")
    assert overhead == {"zaken": 9, "strict": 4, "down": 3}  # every forwarded request, none rejected early

    failures = _by(prom, "zgw_gateway_upstream_failures_total > 0", "component", "reason")
    assert failures == {("down", "connect"): 3}
    assert prom.scalar('sum(zgw_gateway_upstream_failures_total{reason="connect"})') == 3

    minted = _by(prom, "sum by (caller) (zgw_gateway_tokens_minted_total)", "caller")
    assert minted == {"legacy-dms": 1, "reporting": 1}  # one token per client, reused across components
    lookups = _by(prom, "zgw_gateway_token_cache_lookups_total", "result")
    assert lookups == {"miss": 2, "hit": 16 - 2}  # every request that got as far as a token
    assert prom.query("zgw_gateway_token_mint_failures_total > 0") == {}

    assert _by(prom, "zgw_gateway_crs_rejections_total", "code") == {"412": 3, "406": 1}
    forbidden = _by(prom, "zgw_gateway_upstream_forbidden_total", "component", "code")
    assert forbidden == {("strict", "permission_denied"): 1}

    assert prom.scalar("sum(zgw_gateway_request_bytes_total)") == len(POST_BODY)
    assert prom.scalar("sum(zgw_gateway_response_bytes_total)") == received
    assert prom.scalar("sum(zgw_gateway_in_flight_requests)") == 0

    assert _by(prom, "zgw_gateway_config_reloads_total", "result") == {"success": 0, "failure": 0}
    last_reload = prom.scalar("zgw_gateway_config_last_reload_success_timestamp_seconds")
    assert before_start <= last_reload <= after_start  # the start of the process counts as the first load
    build = _by(prom, "zgw_gateway_build_info", "version")
    assert len(build) == 1 and next(iter(build.values())) == 1
    assert prom.scalar("zgw_gateway_ready") == 1


def _promtool(exposition: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PROMTOOL, "check", "metrics"], input=exposition, capture_output=True, text=True, timeout=30, check=False
    )


def test_promtool_accepts_the_exposition_after_real_traffic(
    sandbox: str, strict_upstream: str, gateway_factory: Callable[..., GatewayProcess]
) -> None:
    if not Path(PROMTOOL).exists():
        pytest.skip("promtool is not installed: run scripts/install-tools as root (Debian package prometheus)")
    gw = gateway_factory(_config(sandbox, strict_upstream))
    _send(gw, TRAFFIC)
    exposition = gw.metrics()
    assert "zgw_gateway_requests_total{" in exposition
    result = _promtool(exposition)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""  # no lint warnings either

    # The check can fail: a counter without _total is a lint problem it reports.
    broken = "# HELP bad_counter A counter.\n# TYPE bad_counter counter\nbad_counter 1\n"
    assert _promtool(broken).returncode != 0


def test_metrics_only_on_the_admin_port(gateway: GatewayProcess) -> None:
    proxy = httpx.get(gateway.url + "/metrics", headers={"X-API-Key": API_KEY}, timeout=5)
    assert proxy.status_code == 404
    assert "zgw_gateway" not in proxy.text
    for path in ("/-/healthy", "/-/ready"):
        assert httpx.get(gateway.url + path, timeout=5).status_code == 404
        assert httpx.get(gateway.admin_url + path, timeout=5).status_code == 200
    admin = httpx.get(gateway.admin_url + "/metrics", timeout=5)
    assert admin.status_code == 200
    assert admin.headers["content-type"].startswith("text/plain")


def test_ready_names_an_unreadable_secret_and_healthy_stays_up(
    sandbox: str, gateway_factory: Callable[..., GatewayProcess]
) -> None:
    config = base_config(sandbox)
    config["callers"][1]["secret"] = {"env": "TEST_MISSING_SECRET"}
    gw = gateway_factory(config, wait_ready=False)
    ready = httpx.get(gw.admin_url + "/-/ready", timeout=5)
    assert ready.status_code == 503
    assert any("TEST_MISSING_SECRET" in reason for reason in ready.json()["reasons"])
    assert httpx.get(gw.admin_url + "/-/healthy", timeout=5).status_code == 200
    assert "zgw_gateway_ready 0.0" in gw.metrics()
