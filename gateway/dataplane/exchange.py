"""One request as the gateway records it: who and what it is, how it ended, and its metrics and access line.

An `Exchange` is made when a request arrives (request id, trace context, the client as trusted proxies
tell it) and finished exactly once: by `refuse` when the gateway answers itself, or by `finish` after the
upstream's answer was relayed. Finishing writes the metrics and one access-log line. Both request paths
(proxied requests here, notifications in `notifications.py`) answer with `answer`/`problem_answer` and
write their access line with `access`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import time
import uuid
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
_HEX_ID = re.compile(r"^[0-9a-fA-F]{32}$")
_ID_SEGMENT = re.compile(r"/(?:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|\d+)(?=/|$)")


class Outcome:
    """What happened upstream, for the metrics and the access log. A plain class: compiled with mypyc, a
    dataclass's __init__ stays the interpreted one the dataclasses module writes (issue 23)."""

    __slots__ = (
        "bytes_out", "detail", "error", "forbidden_code", "problem", "retried", "status", "upstream_seconds",
        "upstream_status",
    )  # fmt: skip

    def __init__(self) -> None:
        self.status = 0
        self.upstream_status = 0
        self.bytes_out = 0
        self.upstream_seconds = 0.0
        self.error = ""  # a reason from metrics.FAILURE_REASONS, or an abort reason
        self.problem: problems.Problem | None = None
        self.detail = ""
        self.forbidden_code = ""
        self.retried = ""


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
        if incoming_id and _REQUEST_ID.match(incoming_id):
            self.request_id = incoming_id.decode()
        else:  # a random UUID (RFC 9562 section 5.4: version 4, variant 10), without its dashes
            self.request_id = f"{random[:12]}4{random[13:16]}{'89ab'[int(random[16], 16) & 3]}{random[17:32]}"
        incoming_trace = self.headers.get(b"traceparent")
        trace = _TRACEPARENT.match(incoming_trace) if incoming_trace else None
        self.trace_started = trace is None
        if trace is None:  # W3C Trace Context: start a trace when the caller sent none (or a malformed one)
            self.trace_id = random[32:64]
            self.traceparent = f"00-{self.trace_id}-{random[64:]}-01"
        else:
            self.trace_id = trace.group(1).decode()
            self.traceparent = trace.group(0).decode()

    def problem_answer(self, refusal: Refused) -> tuple[list[tuple[bytes, bytes]], bytes]:
        """The headers and body of the gateway's own problem+json answer to this request."""
        body = refusal.problem.body(refusal.detail, instance(self.request_id))
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
        return headers, body

    @staticmethod
    async def answer(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        with contextlib.suppress(Exception):  # a caller that is gone cannot be told anything
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})

    async def refuse(self, send: Send, refusal: Refused) -> None:
        """Answer with the gateway's own problem+json and finish."""
        headers, body = self.problem_answer(refusal)
        await self.answer(send, refusal.problem.status, headers, body)
        self.outcome.bytes_out = len(body)
        self.finish(refusal.problem.status, error=self.outcome.error or refusal.problem.code)

    def access(self, fields: dict[str, Any]) -> None:
        """The request's access line: its ids and client, then `fields`; none at all with `log.access: false`."""
        if self.write_access:
            logs.access({"request_id": self.request_id, "trace_id": self.trace_id, "client": self.peer.ip, **fields})

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
        if self.write_access:  # one dict: `access` would copy it into another
            line: dict[str, Any] = {
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
            }
            if self.log_headers is not None:
                line["headers"] = self.log_headers
            logs.access(line)


def instance(request_id: str) -> str:
    """The problem's `instance` (RFC 9457 section 3.1.5): a `urn:uuid:` URI (RFC 9562) that leads to the access
    line. The gateway's own request ids are UUIDs, so the instance is the line's `request_id` with dashes. An id
    from a trusted proxy that is no UUID becomes a UUIDv8 (RFC 9562 section 5.8): of its own 32 hex digits when
    it has them (only the version and variant digits differ, the first twelve match), else of its SHA-256."""
    with contextlib.suppress(ValueError):
        given = uuid.UUID(request_id)
        if given.variant == uuid.RFC_4122 and given.version in range(1, 9):
            return given.urn
    if _HEX_ID.match(request_id):
        value = int(request_id, 16)
    else:
        value = int.from_bytes(hashlib.sha256(request_id.encode()).digest()[:16])
    value = (value & ~(0xF << 76)) | (0x8 << 76)  # version 8
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # variant 10
    return uuid.UUID(int=value).urn
