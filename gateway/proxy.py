"""How one request travels upstream and its answer comes back: headers, streaming, retries, errors.

The bytes travel through `upstream.Pool`, one per component (its own connections, TLS settings and
limits; README "Choices" has the measurements that chose it over aiohttp and httpx). Redirects are never
followed (a token must never reach a redirect target), bodies are never decompressed or re-encoded, and no
header is added that the caller did not send except the ones the gateway owns (Authorization, CRS,
X-Forwarded-*, X-Request-ID, traceparent) and the body framing (Content-Length or chunked).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from . import problems
from .breaker import CircuitBreaker
from .config import Component
from .rewrite import UrlRewriter, is_json_content_type
from .routing import Route
from .tokens import EXPIRED_CODES
from .upstream import Pool, Response, Timeouts, UpstreamError

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

# RFC 9110 section 7.6.1 hop-by-hop fields, plus h2c upgrade fields that must never reach an upstream.
HOP_BY_HOP = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
        b"upgrade", b"proxy-authorization", b"proxy-authenticate", b"http2-settings",
    }
)  # fmt: skip
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
# Bodies up to this size are read before forwarding: replayable for a retry, and cheaper to send.
BUFFER_LIMIT = 64 * 1024
# JSON bodies up to this size are rewritten whole, keeping an exact Content-Length; larger ones stream.
REWRITE_BUFFER_LIMIT = 1024 * 1024
FORBIDDEN_PEEK_LIMIT = 64 * 1024


class BodyTooLarge(Exception):
    """The caller's body grew past the component's limit while streaming."""


class BodyTimeout(Exception):
    """The caller's body stalled longer than limits.body_read_timeout."""


class ClientGone(Exception):
    """The caller disconnected before its body was complete."""


class UpstreamAborted(Exception):
    """The upstream broke off mid-response; the caller's connection must be aborted, not completed."""


@dataclass(slots=True)
class Outcome:
    """What happened upstream, for the metrics and the access log."""

    status: int = 0
    upstream_status: int = 0
    bytes_out: int = 0
    upstream_seconds: float = 0.0
    error: str = ""  # a reason from metrics.FAILURE_REASONS, or an abort reason
    problem: problems.Problem | None = None
    forbidden_code: str = ""
    retried: str = ""


def client_pool(route: Route, ssl_ctx: ssl.SSLContext | None) -> Pool:
    """The connection pool of one component."""
    comp = route.component
    t = comp.timeouts
    return Pool(
        route.upstream_hostname, route.upstream_port, ssl_ctx, comp.max_connections, Timeouts(t.connect, t.read, t.pool)
    )


def ssl_context(component: Component) -> ssl.SSLContext | None:
    """None for http://; for https:// verification is on unless switched off, with the component's CA
    bundle and client certificate when configured. SNI is the upstream's host name."""
    if not component.upstream.startswith("https://"):
        return None
    tls = component.tls
    ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    if not tls.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if tls.cert_file is not None and tls.key_file is not None:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    return ctx


async def request_body(
    receive: Receive, limit: int, timeout: float, first: dict[str, Any] | None = None
) -> AsyncIterator[bytes]:
    """The caller's body as it arrives, bounded in size and in time between chunks."""
    seen = 0
    message = first
    while True:
        if message is None:
            try:
                async with asyncio.timeout(timeout):  # not wait_for: that wraps every chunk in a new task
                    message = await receive()
            except TimeoutError:
                raise BodyTimeout from None
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        seen += len(chunk)
        if seen > limit:
            raise BodyTooLarge
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return
        message = None


async def read_body(receive: Receive, limit: int, timeout: float) -> bytes:
    parts = [chunk async for chunk in request_body(receive, limit, timeout)]
    return b"".join(parts)


async def rewrite_stream(source: AsyncIterator[bytes], rewriter: UrlRewriter) -> AsyncIterator[bytes]:
    stream = rewriter.stream_to_upstream()
    async for chunk in source:
        out = stream.feed(chunk)
        if out:
            yield out
    tail = stream.flush()
    if tail:
        yield tail


def response_headers(
    raw: list[tuple[bytes, bytes]], extra: list[tuple[bytes, bytes]], rewriter: UrlRewriter | None
) -> list[tuple[bytes, bytes]]:
    """Upstream response headers minus hop-by-hop ones (and those `Connection` names), plus the gateway's."""
    out = []
    named: set[bytes] | None = None
    for name, value in raw:
        lname = name.lower()
        if lname in HOP_BY_HOP:
            if lname == b"connection":
                named = {v.strip().lower() for v in value.split(b",")}
            continue
        if rewriter is not None and lname in (b"location", b"content-location"):
            value = rewriter.header_to_public(value.decode("latin-1")).encode("latin-1")
        out.append((lname, value))
    if named:
        out = [(k, v) for k, v in out if k not in named]
    out.extend(extra)
    return out


_PROBLEMS = {
    "dns": problems.UPSTREAM_DNS,
    "tls": problems.UPSTREAM_TLS,
    "timeout": problems.UPSTREAM_TIMEOUT,
    "connect": problems.UPSTREAM_UNREACHABLE,
    "reset": problems.UPSTREAM_RESET,
    "pool": problems.POOL_EXHAUSTED,
}


@dataclass(slots=True)
class Forward:
    """One request on its way upstream: everything `forward` needs, prepared by the app."""

    route: Route
    pool: Pool
    breaker: CircuitBreaker | None
    method: str
    target: bytes  # path and query as they go upstream
    headers: list[tuple[bytes, bytes]]  # Authorization first, so a retry can swap it
    body: bytes | AsyncIterator[bytes] | None
    chunked: bool
    extra_response_headers: list[tuple[bytes, bytes]]
    rewriter: UrlRewriter | None
    refresh_token: Callable[[], bytes] | None  # evicts the cached token, returns a fresh Authorization value
    retry_enabled: bool
    on_retry: Callable[[str], None]


def _head(fw: Forward) -> bytes:
    lines = [b"%s %s HTTP/1.1" % (fw.method.encode(), fw.target)]
    lines.extend(name + b": " + value for name, value in fw.headers)
    lines.append(b"\r\n")
    return b"\r\n".join(lines)


async def forward(fw: Forward, send: Send, outcome: Outcome) -> None:
    """Send the request upstream and stream the answer to the caller; fills `outcome`.

    `timeouts.total` bounds the waiting for the upstream (pool, connect, the answer's headers), a retry
    included; bodies stream for as long as they keep moving (`timeouts.read` between chunks upstream,
    `limits.body_read_timeout` from the caller), so large documents pass.
    """
    timeouts = fw.route.component.timeouts
    deadline = time.monotonic() + timeouts.total
    replayable = fw.body is None or isinstance(fw.body, bytes)
    attempt = 0
    while True:
        attempt += 1
        started = time.perf_counter()
        try:
            resp = await fw.pool.request(fw.method, _head(fw), fw.body, fw.chunked, deadline)
        except (TimeoutError, UpstreamError) as exc:
            outcome.upstream_seconds += time.perf_counter() - started
            reason = exc.reason if isinstance(exc, UpstreamError) else "timeout"
            sent = exc.sent if isinstance(exc, UpstreamError) else True
            if (
                attempt == 1
                and fw.retry_enabled
                and replayable
                and reason != "pool"
                and (not sent or (reason == "reset" and fw.method in IDEMPOTENT))
                and time.monotonic() < deadline
            ):
                fw.on_retry(reason)
                outcome.retried = reason
                continue
            if fw.breaker is not None and reason != "pool":
                fw.breaker.record(False)
            outcome.problem, outcome.error = _PROBLEMS[reason], reason
            return
        outcome.upstream_seconds += time.perf_counter() - started
        try:
            outcome.upstream_status = resp.status
            if resp.status == 403:
                body = await _read(resp, FORBIDDEN_PEEK_LIMIT + 1)
                code = _problem_code(_header(resp.headers, b"content-type"), body)
                outcome.forbidden_code = code
                if (
                    code in EXPIRED_CODES
                    and attempt == 1
                    and replayable
                    and fw.refresh_token is not None
                    and resp.at_eof()
                ):
                    fw.headers[0] = (b"authorization", fw.refresh_token())
                    fw.on_retry("token_expired")
                    outcome.retried = "token_expired"
                    continue
                await _relay(fw, resp, send, outcome, prefix=body)
            else:
                await _relay(fw, resp, send, outcome)
        finally:
            resp.release()
        if fw.breaker is not None:
            fw.breaker.record(resp.status not in (502, 503, 504))
        return


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if len(key) == len(name) and key.lower() == name:
            return value.decode("latin-1")
    return None


async def _read(resp: Response, limit: int) -> bytes:
    try:
        return await resp.read(limit)
    except UpstreamError as exc:
        raise UpstreamAborted from exc


def _problem_code(content_type: str | None, body: bytes) -> str:
    if not content_type or "json" not in content_type:
        return ""
    try:
        data = json.loads(body)
    except ValueError:
        return ""
    code = data.get("code") if isinstance(data, dict) else None
    return code if isinstance(code, str) else ""


async def _relay(fw: Forward, resp: Response, send: Send, outcome: Outcome, prefix: bytes = b"") -> None:
    """Stream the upstream response to the caller; abort the caller's connection if upstream breaks."""
    outcome.status = resp.status
    rewriter = fw.rewriter
    rewrite_body = (
        rewriter is not None
        and is_json_content_type(_header(resp.headers, b"content-type"))
        and _header(resp.headers, b"content-encoding") in (None, "identity")  # compressed: left as it is
    )
    headers = response_headers(resp.headers, fw.extra_response_headers, rewriter)
    if fw.method == "HEAD":
        await send({"type": "http.response.start", "status": resp.status, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return

    if rewrite_body:
        assert rewriter is not None
        length = resp.content_length
        if length is not None and length <= REWRITE_BUFFER_LIMIT:
            body = rewriter.to_public(prefix + await _read(resp, length + 1))
            headers = [(k, v) for k, v in headers if k != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({"type": "http.response.start", "status": resp.status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            outcome.bytes_out += len(body)
            return
        headers = [(k, v) for k, v in headers if k != b"content-length"]
        stream = rewriter.stream_to_public()
        await send({"type": "http.response.start", "status": resp.status, "headers": headers})
        chunk = prefix
        try:
            while True:
                out = stream.feed(chunk)
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
                    outcome.bytes_out += len(out)
                chunk = await resp.read_chunk()
                if not chunk:
                    break
        except UpstreamError as exc:
            outcome.error = "upstream_reset"
            raise UpstreamAborted from exc
        out = stream.flush()
        await send({"type": "http.response.body", "body": out})
        outcome.bytes_out += len(out)
        return

    await send({"type": "http.response.start", "status": resp.status, "headers": headers})
    try:
        chunk = prefix or await resp.read_chunk()
        # A body that arrived whole (most ZGW JSON answers) goes out in one message.
        while not resp.at_eof():
            outcome.bytes_out += len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            chunk = await resp.read_chunk()
    except UpstreamError as exc:
        outcome.error = "upstream_reset"
        raise UpstreamAborted from exc
    outcome.bytes_out += len(chunk)
    await send({"type": "http.response.body", "body": chunk})
