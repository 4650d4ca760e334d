"""Trace context end to end (W3C traceparent/tracestate) and the optional OpenTelemetry span export."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from conftest import API_KEY, GATEWAY_ENV, base_config
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client import CollectorRegistry
from servers import GatewayProcess, ThreadServer, wait_until
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.config.loading import parse
from gateway.config.sections import Tracing
from gateway.dataplane.app import GatewayApp, create_app
from gateway.dataplane.tracing import Tracer

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACESTATE = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
TRACEPARENT_RE = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-01$")


def _recording_app(seen: list[dict[str, str]]) -> Starlette:
    async def any_path(request: Request) -> Response:
        seen.append(dict(request.headers))
        return JSONResponse({"count": 0, "results": []})

    return Starlette(routes=[Route("/{path:path}", any_path)])


@pytest.fixture
def echo() -> Iterator[tuple[str, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []
    with ThreadServer(_recording_app(seen)) as server:
        yield server.url, seen


def _echo_config(upstream: str, **overrides: Any) -> dict[str, Any]:
    config = base_config(upstream, **overrides)
    config["components"] = {"zaken": {"prefix": "/zaken/api/v1", "upstream": f"{upstream}/zaken/api/v1"}}
    for caller in config["callers"]:
        caller["components"] = ["zaken"]
    return config


def _access_trace_id(gw: GatewayProcess, request_id: str) -> str:
    def line() -> dict[str, Any] | None:
        for raw in gw.log_lines():
            if request_id in raw:
                parsed: dict[str, Any] = json.loads(raw)
                return parsed
        return None

    wait_until(lambda: line() is not None, 5)
    found = line()
    assert found is not None
    return str(found["trace_id"])


def test_callers_trace_context_goes_upstream_unchanged(
    echo: tuple[str, list[dict[str, str]]], gateway_factory: Callable[..., GatewayProcess]
) -> None:
    url, seen = echo
    gw = gateway_factory(_echo_config(url))
    r = httpx.get(
        gw.url + "/zaken/api/v1/zaken",
        headers={"X-API-Key": API_KEY, "traceparent": TRACEPARENT, "tracestate": TRACESTATE},
        timeout=10,
    )
    assert r.status_code == 200
    [headers] = seen
    assert headers["traceparent"] == TRACEPARENT
    assert headers["tracestate"] == TRACESTATE
    assert _access_trace_id(gw, r.headers["x-request-id"]) == "4bf92f3577b34da6a3ce929d0e0e4736"


MALFORMED = [
    "00-not-a-trace-01",
    "00-" + "0" * 31 + "-00f067aa0ba902b7-01",
    "00-" + "0" * 32 + "-00f067aa0ba902b7-01",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01",
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    TRACEPARENT.upper(),
]


@pytest.mark.parametrize("sent", [None, *MALFORMED])
def test_a_trace_is_started_when_absent_or_malformed(
    sent: str | None, echo: tuple[str, list[dict[str, str]]], gateway_factory: Callable[..., GatewayProcess]
) -> None:
    url, seen = echo
    gw = gateway_factory(_echo_config(url))
    headers = {"X-API-Key": API_KEY} | ({"traceparent": sent} if sent else {})
    r = httpx.get(gw.url + "/zaken/api/v1/zaken", headers=headers, timeout=10)
    assert r.status_code == 200
    [upstream] = seen
    match = TRACEPARENT_RE.match(upstream["traceparent"])
    assert match is not None, upstream["traceparent"]
    assert upstream["traceparent"] != sent
    assert _access_trace_id(gw, r.headers["x-request-id"]) == match.group(1)


def _otlp_receiver(batches: list[ExportTraceServiceRequest]) -> Starlette:
    async def traces(request: Request) -> Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.body())
        batches.append(message)
        return Response(b"", media_type="application/x-protobuf")

    return Starlette(routes=[Route("/v1/traces", traces, methods=["POST"])])


def test_spans_are_exported_over_otlp_when_configured(
    echo: tuple[str, list[dict[str, str]]], gateway_factory: Callable[..., GatewayProcess]
) -> None:
    batches: list[ExportTraceServiceRequest] = []
    with ThreadServer(_otlp_receiver(batches)) as collector:
        url, _ = echo
        config = _echo_config(url, tracing={"otlp_endpoint": collector.url, "service_name": "gw-under-test"})
        gw = gateway_factory(config)
        with httpx.Client(base_url=gw.url, timeout=10) as client:
            ok = client.get("/zaken/api/v1/zaken", headers={"X-API-Key": API_KEY, "traceparent": TRACEPARENT})
            bad = client.get("/zaken/api/v1/zaken", headers={"X-API-Key": "wrong"})
        gw.stop()  # the shutdown flushes the batch
        assert (ok.status_code, bad.status_code) == (200, 401)
        wait_until(lambda: _spans(batches) == 2)

    spans = {}
    for batch in batches:
        for resource_spans in batch.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            assert resource["service.name"] == "gw-under-test"
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    attributes = {a.key: a.value for a in span.attributes}
                    spans[attributes["zgw.request_id"].string_value] = (span, attributes)
    span, attributes = spans[ok.headers["x-request-id"]]
    assert span.trace_id.hex() == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert span.parent_span_id.hex() == "00f067aa0ba902b7"  # a child of the caller's span
    assert span.name == "GET zaken"
    assert attributes["zgw.caller"].string_value == "legacy-dms"
    assert attributes["http.response.status_code"].int_value == 200
    assert 0 < span.end_time_unix_nano - span.start_time_unix_nano < 10 * 10**9
    span, attributes = spans[bad.headers["x-request-id"]]
    assert attributes["zgw.caller"].string_value == "unknown"
    assert attributes["error.type"].string_value == "unknown-caller"
    assert attributes["http.response.status_code"].int_value == 401


def _spans(batches: list[ExportTraceServiceRequest]) -> int:
    return sum(len(s.spans) for b in batches for r in b.resource_spans for s in r.scope_spans)


async def _one_request_in_a_lifespan(app: GatewayApp) -> int:
    """ASGI lifespan startup, one request (refused: no API key), lifespan shutdown; returns the status."""
    lifespan: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    started, answers = asyncio.Event(), []

    async def lifespan_send(message: dict[str, Any]) -> None:
        if message["type"] == "lifespan.startup.complete":
            started.set()

    async def send(message: dict[str, Any]) -> None:
        answers.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    lifespan.put_nowait({"type": "lifespan.startup"})
    running = asyncio.create_task(app({"type": "lifespan"}, lifespan.get, lifespan_send))
    await started.wait()
    path = "/zaken/api/v1/zaken"
    scope = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": [], "client": ("127.0.0.1", 50000), "scheme": "http"}  # fmt: skip
    await app(scope, receive, send)
    lifespan.put_nowait({"type": "lifespan.shutdown"})
    await running
    return int(answers[0]["status"])


def test_the_lifespan_shutdown_exports_the_spans_still_queued() -> None:
    """The batch processor sends every 5 s; a span queued when the gateway stops goes out with the shutdown."""
    batches: list[ExportTraceServiceRequest] = []
    with ThreadServer(_otlp_receiver(batches)) as collector:
        config = _echo_config("http://127.0.0.1:9", tracing={"otlp_endpoint": collector.url})
        app = create_app(parse(config), registry=CollectorRegistry(), environ=GATEWAY_ENV)
        assert asyncio.run(_one_request_in_a_lifespan(app)) == 401
        assert _spans(batches) == 1  # already there when the lifespan shutdown completed


def test_tracer_is_off_without_an_endpoint() -> None:
    def load() -> Any:
        raise AssertionError("the SDK is not even imported when tracing is off")

    assert Tracer(Tracing(), load=load).enabled is False


def test_missing_sdk_is_an_error_not_a_crash(caplog: pytest.LogCaptureFixture) -> None:
    def load() -> Any:
        raise ImportError("No module named 'opentelemetry'")

    with caplog.at_level(logging.ERROR, logger="zgw_gateway"):
        tracer = Tracer(Tracing(otlp_endpoint="http://127.0.0.1:4318"), load=load)
    assert tracer.enabled is False
    [record] = caplog.records
    assert "OpenTelemetry SDK is not installed" in record.getMessage()
    assert record.__dict__["event"] == "tracing_unavailable"
    tracer.shutdown()  # harmless when nothing was started
