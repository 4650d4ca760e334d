"""One request as the gateway records it: who and what it is, how it ended, and its metrics and access line.

An `Exchange` is made when a request arrives (request id, trace context, the client as trusted proxies
tell it) and finished exactly once: by `refuse` when the gateway answers itself, or by `finish` after the
upstream's answer was relayed. Finishing writes the metrics and one access-log line.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from dataclasses import dataclass
from typing import Any

from gateway.dataplane import logs, problems
from gateway.dataplane.callers import Caller, CallerDirectory
from gateway.dataplane.metrics import Metrics, method_label
from gateway.dataplane.problems import Refused
from gateway.dataplane.routing import Route
from gateway.dataplane.tracing import Tracer

Send = Any  # the ASGI send callable

_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")
# W3C Trace Context 3.2: version ff and all-zero ids are invalid.
_TRACEPARENT = re.compile(rb"^(?!ff)[0-9a-f]{2}-(?!0{32})([0-9a-f]{32})-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$")
_ID_SEGMENT = re.compile(r"/(?:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|\d+)(?=/|$)")


@dataclass(slots=True)
class Outcome:
    """What happened upstream, for the metrics and the access log."""

    status: int = 0
    upstream_status: int = 0
    bytes_out: int = 0
    upstream_seconds: float = 0.0
    error: str = ""  # a reason from metrics.FAILURE_REASONS, or an abort reason
    problem: problems.Problem | None = None
    detail: str = ""
    forbidden_code: str = ""
    retried: str = ""


class Exchange:
    """Per-request bookkeeping. The request's facts are read once from the ASGI scope."""

    __slots__ = (
        "bytes_in", "caller", "headers", "log_headers", "method", "metrics", "outcome", "peer", "query",
        "raw_headers", "raw_path", "request_id", "route", "scope", "start", "trace_id", "trace_started",
        "traceparent", "tracer", "write_access",
    )  # fmt: skip

    def __init__(
        self,
        scope: dict[str, Any],
        callers: CallerDirectory,
        metrics: Metrics,
        tracer: Tracer,
        write_access: bool,
        log_headers: list[bytes],
    ) -> None:
        self.start = time.perf_counter()
        self.scope = scope
        self.metrics = metrics
        self.tracer = tracer
        self.write_access = write_access
        self.method: str = scope["method"]
        self.raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        self.query: bytes = scope.get("query_string", b"")
        self.raw_headers: list[tuple[bytes, bytes]] = scope["headers"]
        self.headers = dict(self.raw_headers)
        self.peer = peer = callers.peer(scope.get("client"), self.headers.get(b"x-forwarded-for"))
        self.route: Route | None = None
        self.caller: Caller | None = None
        self.bytes_in = 0
        self.outcome = Outcome()
        self.log_headers = logs.allowed_headers(self.raw_headers, log_headers) if log_headers else None
        random = os.urandom(40).hex()  # one syscall for the request id, a trace id and a span id
        incoming_id = self.headers.get(b"x-request-id") if peer.trusted else None
        self.request_id = incoming_id.decode() if incoming_id and _REQUEST_ID.match(incoming_id) else random[:32]
        incoming_trace = self.headers.get(b"traceparent")
        trace = _TRACEPARENT.match(incoming_trace) if incoming_trace else None
        self.trace_started = trace is None
        if trace is None:  # W3C Trace Context: start a trace when the caller sent none (or a malformed one)
            self.trace_id = random[32:64]
            self.traceparent = f"00-{self.trace_id}-{random[64:]}-01"
        else:
            self.trace_id = trace.group(1).decode()
            self.traceparent = trace.group(0).decode()

    async def refuse(self, send: Send, refusal: Refused) -> None:
        """Answer with the gateway's own problem+json and finish."""
        problem = refusal.problem
        body = problem.body(refusal.detail, "urn:uuid:" + uuid_form(self.request_id))
        headers = [
            (b"content-type", problems.CONTENT_TYPE),
            (b"content-length", b"%d" % len(body)),
            (b"x-request-id", self.request_id.encode()),
        ]
        if refusal.retry_after is not None:
            headers.append((b"retry-after", b"%d" % refusal.retry_after))
        if refusal.close:
            headers.append((b"connection", b"close"))
        headers.extend(refusal.headers)
        with contextlib.suppress(Exception):  # a caller that is gone cannot be told anything
            await send({"type": "http.response.start", "status": problem.status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        self.outcome.bytes_out = len(body)
        self.finish(problem.status, error=self.outcome.error or problem.code)

    def finish(self, status: int, source: str = "gateway", error: str = "") -> None:
        metrics = self.metrics
        caller = self.caller.name if self.caller else "unknown"
        route = self.route
        component = route.name if route else "none"
        resource = route.resource(self.raw_path) if route else "none"
        method = method_label(self.method)
        duration = time.perf_counter() - self.start
        outcome = self.outcome
        error = error or outcome.error
        metrics.requests(caller, component, method, str(status), resource, source).inc()
        metrics.request_duration(caller, component, method, resource).observe(duration)
        if self.bytes_in:
            metrics.request_bytes(caller, component).inc(self.bytes_in)
        if outcome.bytes_out:
            metrics.response_bytes(caller, component).inc(outcome.bytes_out)
        if self.tracer.enabled:
            self.tracer.record(
                self.traceparent,
                duration,
                status,
                {"http.request.method": method, "zgw.component": component, "zgw.resource": resource,
                 "zgw.caller": caller, "zgw.request_id": self.request_id, "error.type": error or None},
            )  # fmt: skip
        if self.write_access:
            logs.access(
                {
                    "request_id": self.request_id,
                    "trace_id": self.trace_id,
                    "client": self.peer.ip,
                    "caller": caller,
                    "component": component,
                    "resource": resource,
                    "method": self.method,
                    "path": _ID_SEGMENT.sub("/{id}", self.raw_path.decode("ascii", "replace")),
                    "status": status,
                    "upstream_status": outcome.upstream_status or None,
                    "source": source,
                    "bytes_in": self.bytes_in,
                    "bytes_out": outcome.bytes_out,
                    "duration": round(duration, 6),
                    "upstream_duration": round(outcome.upstream_seconds, 6),
                    "error": error or None,
                    "detail": outcome.detail or None,
                    "retried": outcome.retried or None,
                    **({"headers": self.log_headers} if self.log_headers is not None else {}),
                }
            )


def uuid_form(request_id: str) -> str:
    if len(request_id) == 32:
        return f"{request_id[:8]}-{request_id[8:12]}-{request_id[12:16]}-{request_id[16:20]}-{request_id[20:]}"
    return request_id
