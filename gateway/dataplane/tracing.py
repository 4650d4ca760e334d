"""Whether and where the gateway exports a span per request: OpenTelemetry over OTLP/HTTP, off by default.

Trace context itself needs none of this: `app.handle` passes the caller's W3C `traceparent` (and
`tracestate`) upstream unchanged, starts one when absent, and logs the trace id. This module only adds an
exported span per request, as a child of the caller's span, when `tracing.otlp_endpoint` is set. When it
is not, `Tracer.enabled` is False and the request path pays one attribute read. The OpenTelemetry SDK is
an optional dependency (`opentelemetry-sdk`, `opentelemetry-exporter-otlp-proto-http`); without it the
gateway logs an error at start and serves without export. The tracing config applies at start only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from gateway.config.sections import Tracing

log = logging.getLogger("zgw_gateway")

OTLP_TRACES_PATH = "/v1/traces"


def load_sdk() -> Any:
    """The OpenTelemetry modules the exporter needs; ImportError when they are not installed."""
    import importlib

    names = {
        "trace": "opentelemetry.trace",
        "sdk": "opentelemetry.sdk.trace",
        "export": "opentelemetry.sdk.trace.export",
        "resources": "opentelemetry.sdk.resources",
        "otlp": "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    }
    return type("OTel", (), {key: importlib.import_module(name) for key, name in names.items()})


class Tracer:
    """Exports one SERVER span per request to an OTLP/HTTP endpoint, or does nothing."""

    def __init__(self, config: Tracing, load: Callable[[], Any] = load_sdk) -> None:
        self.enabled = False
        self._provider: Any = None
        self._tracer: Any = None
        self._otel: Any = None
        if not config.otlp_endpoint:
            return
        try:
            otel = load()
        except ImportError:
            log.error(
                "tracing.otlp_endpoint is set but the OpenTelemetry SDK is not installed; spans are not exported "
                "(install opentelemetry-sdk and opentelemetry-exporter-otlp-proto-http)",
                extra={"event": "tracing_unavailable"},
            )
            return
        endpoint = config.otlp_endpoint.rstrip("/")
        if not endpoint.endswith(OTLP_TRACES_PATH):
            endpoint += OTLP_TRACES_PATH
        resource = otel.resources.Resource.create({"service.name": config.service_name})
        self._provider = otel.sdk.TracerProvider(resource=resource)
        self._provider.add_span_processor(
            otel.export.BatchSpanProcessor(otel.otlp.OTLPSpanExporter(endpoint=endpoint, timeout=5))
        )
        self._tracer = self._provider.get_tracer("zgw_gateway")
        self._otel = otel
        self.enabled = True
        log.info("exporting spans", extra={"event": "tracing", "endpoint": endpoint})

    def record(self, traceparent: str, duration: float, status: int, attributes: dict[str, Any]) -> None:
        """One finished request as a span under the caller's (or the gateway-started) `traceparent`."""
        trace = self._otel.trace
        _, trace_id, parent_id, flags = traceparent.split("-")
        parent = trace.SpanContext(
            trace_id=int(trace_id, 16),
            span_id=int(parent_id, 16),
            is_remote=True,
            trace_flags=trace.TraceFlags(int(flags, 16) & 1),
        )
        end = time.time_ns()
        name = f"{attributes.get('http.request.method', '')} {attributes.get('zgw.component', '')}".strip()
        span = self._tracer.start_span(
            name,
            context=trace.set_span_in_context(trace.NonRecordingSpan(parent)),
            kind=trace.SpanKind.SERVER,
            start_time=end - int(duration * 1e9),
            attributes={k: v for k, v in attributes.items() if v is not None},
        )
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            # OpenTelemetry HTTP semantic conventions: 4xx is the caller's error, not the server span's.
            span.set_status(trace.Status(trace.StatusCode.ERROR))
        span.end(end_time=end)

    def shutdown(self) -> None:
        """Flush queued spans (bounded by the exporter's timeout)."""
        if self._provider is not None:
            self._provider.shutdown()
            self._provider = None
            self.enabled = False
